"""Measure an over-the-air update of the demo bundle on this machine: announcement-to-swap time, frames without
counts at the swap, and how long the old model kept counting while the new one was downloaded and checked.

    .venv/bin/python scripts/measure_ota_swap.py [--out results.json]

Runs a real Mosquitto (free loopback port), a real HTTP store and a real `starfish agent run` on a looping
synthetic clip with the committed demo bundle (v6), then announces the same model files re-signed as v7 with a
throwaway key (the agent trusts it besides the demo key). Nothing is trained. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.bundle import generate_keypair  # noqa: E402
from tests.helpers.agent import AgentProcess, agent_config, make_clip, write_config  # noqa: E402
from tests.helpers.bundles import TinyBundle, rebundle, signed_announcement, tar_bundle  # noqa: E402
from tests.helpers.http_server import BundleServer  # noqa: E402
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, wait_until  # noqa: E402

DEMO = REPO / "models" / "demo" / "bundle"
DEMO_KEY = REPO / "models" / "demo" / "demo_key.pub"
DEVICE = "ota-measure"


def _ts(doc: dict) -> float:
    return datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="Give up after this many seconds.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ota-measure-") as tmp_name:
        tmp = Path(tmp_name)
        generate_keypair(tmp / "bundle.pem", tmp / "bundle.pub")
        generate_keypair(tmp / "release.pem", tmp / "release.pub")
        store = tmp / "store"
        store.mkdir()
        v7 = rebundle(DEMO, tmp / "v7", tmp / "bundle.pem", version=7, parent_version=6)
        tar_bundle(v7, store / "v7.tar")
        clip = make_clip(tmp / "clip.mp4", frames=60, width=640, height=360)
        broker = MosquittoBroker(tmp / "broker").start()
        sub = Subscriber(broker.host, broker.port, [f"starfish/{DEVICE}/#"], client_id="ota-measure-sub").start()
        with BundleServer(store) as server:
            cfg = agent_config(tmp, TinyBundle(DEMO, DEMO_KEY), clip.path, broker.port, device_id=DEVICE)
            cfg["cameras"][0].update(loop=True, realtime=False)  # every frame processed: gaps are lost frames
            cfg["detector"].update(trusted_keys=[str(DEMO_KEY), str(tmp / "bundle.pub")], backends=["onnxruntime"])
            cfg["updates"] = {
                "models_dir": str(tmp / "models"),
                "release_keys": [str(tmp / "release.pub")],
                "check_runs": 3,
                # The candidate is timed while the running model keeps the same cores busy.
                "latency_budget_factor": 10,
                "probation_frames": 10,
                "probation_s": 5,
            }
            agent = AgentProcess(write_config(tmp / "agent.yaml", cfg), tmp / "agent.log")
            try:
                counts = lambda: [m.json() for m in sub.on("/counts")]  # noqa: E731
                if not wait_until(lambda: len(counts()) >= 5, 120):
                    raise SystemExit(f"the agent did not count:\n{agent.log()[-3000:]}")
                path = store / "v7.tar"
                raw = signed_announcement(path, server.url(path.name), tmp / "release.pem", 7)
                tar_bytes = path.stat().st_size
                sent = time.time()
                sub.client.publish(f"starfish/{DEVICE}/model/set", raw, qos=1).wait_for_publish(5)
                events = lambda: [m.json() for m in sub.on("/model/result")]  # noqa: E731
                if not wait_until(
                    lambda: any(e["event"] in ("committed", "failed", "rolled_back") for e in events()), args.timeout
                ):
                    raise SystemExit(f"no outcome: {events()}\n{agent.log()[-3000:]}")
                agent.terminate()
            finally:
                if agent.alive():
                    agent.kill9()
        sub.stop()
        broker.kill()
    docs = sorted(counts(), key=lambda d: d["seq"])
    first_new = next(i for i, d in enumerate(docs) if d["model"]["version"] == 7)
    by_event = {e["event"]: _ts(e) for e in events()}
    frames = [d["frame"] for d in docs]
    around = docs[max(0, first_new - 20) : first_new + 20]
    intervals = [_ts(b) - _ts(a) for a, b in zip(around, around[1:], strict=False)]
    old_during = [d for d in docs if d["model"]["version"] == 6 and _ts(d) >= sent]
    result = {
        "bundle": "models/demo/bundle v6 -> the same files re-signed as v7",
        "tar_bytes": tar_bytes,
        "outcome": events()[-1]["event"],
        "event_at_s": {event: round(at - sent, 3) for event, at in by_event.items()},
        "announcement_to_swap_s": round(_ts(docs[first_new]) - sent, 3),
        "announcement_to_commit_s": round(by_event.get("committed", float("nan")) - sent, 3),
        "frames_without_counts_at_swap": frames[first_new] - frames[first_new - 1] - 1,
        "seq_contiguous": [d["seq"] for d in docs] == list(range(docs[0]["seq"], docs[-1]["seq"] + 1)),
        "old_model_frames_while_updating": len(old_during),
        "interval_at_swap_s": round(_ts(docs[first_new]) - _ts(docs[first_new - 1]), 3),
        "median_interval_near_swap_s": round(sorted(intervals)[len(intervals) // 2], 3),
        "check": next((e.get("check") for e in events() if e["event"] == "swapping"), None),
        "probation": events()[-1].get("probation"),
    }
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201 - the script's output
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
