"""Measure an over-the-air update of the demo bundle on this machine: announcement-to-swap time, frames without
counts at the swap, how long the old model kept counting while the new one was downloaded and checked, and the
download's resume after the bundle server is killed mid-transfer.

    .venv/bin/python scripts/measure_ota_swap.py [--out results.json] [--no-server-kill]

Runs a real Mosquitto (free loopback port), a real HTTP store and a real `starfish agent run` on a looping clip of
the project's generator (1280x720) with the committed demo bundle (version N), then announces the same model
files re-signed as N+1 with a throwaway key (the agent trusts it besides the demo key), with golden frames recorded from
that clip's frames as export records them, so the staging check compares them for real. The store serves the tar
at `--rate` bytes/s; the server is killed once `--kill-at` of the tar has arrived, and started again on the same
port `--down-s` later. Nothing is trained. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.bundle import MANIFEST_NAME, generate_keypair, parse_manifest  # noqa: E402
from export.golden import frames_from_records  # noqa: E402
from tests.helpers.agent import AgentProcess, agent_config, write_config  # noqa: E402
from tests.helpers.bundles import TinyBundle, rebundle, record_golden_for, signed_announcement, tar_bundle  # noqa: E402
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, free_port, wait_until  # noqa: E402

DEMO = REPO / "models" / "demo" / "bundle"
DEMO_KEY = REPO / "models" / "demo" / "demo_key.pub"
DEVICE = "ota-measure"


def _ts(doc: dict) -> float:
    return datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()


def _clip_and_golden(tmp: Path) -> tuple[Path, object]:
    """A generator clip (video + frames) and golden frames for the demo bundle's variants recorded on three of them."""
    from edge_agent.dataset import ReefDataset
    from train.synth import generate_dataset

    root = tmp / "clip"
    generate_dataset(root, videos=1, frames=60, width=1280, height=720, seed=11, empty_fraction=0.0, workers=1)
    records = ReefDataset.open(root, image_size=(1280, 720)).records
    golden = record_golden_for(DEMO, images=frames_from_records(records))
    return root / "videos" / "video_0.mp4", golden


class _StoreProcess:
    """The test suite's HTTP store in its own process (so a kill -9 drops its connections, as a crash does),
    serving ``root`` on 127.0.0.1:``port`` at ``rate`` bytes/s."""

    def __init__(self, root: Path, port: int, rate: int) -> None:
        self.root, self.port, self.rate = root, port, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _StoreProcess:
        cmd = [sys.executable, "-m", "tests.helpers.http_server", str(self.root), str(self.port), str(self.rate)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"serving":
            raise SystemExit("the bundle store did not start")
        return self

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _kill_store_mid_download(store: _StoreProcess, name: str, models: Path, fraction: float, down_s: float) -> dict:
    """kill -9 the store once ``fraction`` of ``name`` sits in the agent's partial download; start it again on
    the same port ``down_s`` later. Returns what was seen."""
    size = (store.root / name).stat().st_size
    downloads = models / "downloads"
    partial = lambda: sum(p.stat().st_size for p in downloads.glob("*.part")) if downloads.is_dir() else 0  # noqa: E731
    if not wait_until(lambda: partial() >= fraction * size, 120):
        raise SystemExit("the download never reached the kill point")
    store.kill()
    killed, at = time.time(), partial()
    time.sleep(down_s)
    store.start()
    return {"tar_bytes": size, "killed_at_bytes": at, "down_s": round(time.time() - killed, 3), "back_at": time.time()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="Give up after this many seconds.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    parser.add_argument("--rate", type=int, default=8_000_000, help="Bytes/s the store serves the tar at.")
    parser.add_argument("--kill-at", type=float, default=0.4, help="Share of the tar downloaded at the kill.")
    parser.add_argument("--down-s", type=float, default=2.0, help="Seconds the server stays down.")
    parser.add_argument("--no-server-kill", action="store_true", help="Do not kill the server mid-download.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ota-measure-") as tmp_name:
        tmp = Path(tmp_name)
        generate_keypair(tmp / "bundle.pem", tmp / "bundle.pub")
        generate_keypair(tmp / "release.pem", tmp / "release.pub")
        store = tmp / "store"
        store.mkdir()
        clip, golden = _clip_and_golden(tmp)
        old = parse_manifest((DEMO / MANIFEST_NAME).read_bytes()).version
        new = old + 1
        candidate = rebundle(DEMO, tmp / f"v{new}", tmp / "bundle.pem", golden=golden, version=new, parent_version=old)
        tar_bundle(candidate, store / f"v{new}.tar")
        broker = MosquittoBroker(tmp / "broker").start()
        sub = Subscriber(broker.host, broker.port, [f"starfish/{DEVICE}/#"], client_id="ota-measure-sub").start()
        server = _StoreProcess(store, free_port(), args.rate).start()
        resume: dict | None = None
        try:
            cfg = agent_config(tmp, TinyBundle(DEMO, DEMO_KEY), str(clip), broker.port, device_id=DEVICE)
            cfg["cameras"][0].update(loop=True, realtime=False)  # every frame processed: gaps are lost frames
            cfg["detector"].update(trusted_keys=[str(DEMO_KEY), str(tmp / "bundle.pub")], backends=["onnxruntime"])
            cfg["updates"] = {
                "models_dir": str(tmp / "models"),
                "release_keys": [str(tmp / "release.pub")],
                "check_runs": 3,
                "backoff_initial_s": 0.5,
                "backoff_max_s": 1.0,
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
                path = store / f"v{new}.tar"
                raw = signed_announcement(path, server.url(path.name), tmp / "release.pem", new)
                tar_bytes = path.stat().st_size
                sent = time.time()
                sub.client.publish(f"starfish/{DEVICE}/model/set", raw, qos=1).wait_for_publish(5)
                events = lambda: [m.json() for m in sub.on("/model/result")]  # noqa: E731
                if not args.no_server_kill:
                    resume = _kill_store_mid_download(server, path.name, tmp / "models", args.kill_at, args.down_s)
                if not wait_until(
                    lambda: any(e["event"] in ("committed", "failed", "rolled_back") for e in events()), args.timeout
                ):
                    raise SystemExit(f"no outcome: {events()}\n{agent.log()[-3000:]}")
                agent.terminate()
            finally:
                if agent.alive():
                    agent.kill9()
        finally:
            server.kill()
        sub.stop()
        broker.kill()
    docs = sorted(counts(), key=lambda d: d["seq"])
    first_new = next(i for i, d in enumerate(docs) if d["model"]["version"] == new)
    by_event = {e["event"]: _ts(e) for e in events()}
    frames = [d["frame"] for d in docs]
    around = docs[max(0, first_new - 20) : first_new + 20]
    intervals = [_ts(b) - _ts(a) for a, b in zip(around, around[1:], strict=False)]
    old_during = [d for d in docs if d["model"]["version"] == old and _ts(d) >= sent]
    result = {
        "bundle": f"models/demo/bundle v{old} -> the same files re-signed as v{new}, with golden frames",
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
        "store_rate_bytes_per_s": args.rate,
    }
    if resume is not None:
        # The download is verified as soon as it is complete: "verifying" marks the end of the resumed transfer.
        resume["back_to_downloaded_s"] = round(by_event.get("verifying", float("nan")) - resume.pop("back_at"), 3)
        resume["rest_at_rate_s"] = round((resume["tar_bytes"] - resume["killed_at_bytes"]) / args.rate, 3)
        result["server_kill"] = resume
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201 - the script's output
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
