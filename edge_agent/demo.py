"""`starfish agent demo`: the whole product in one command on a fresh machine.

Steps: find the demo bundle (`models/demo/`) and its committed public key; take the user's clip, or have the
injected clip maker generate a short synthetic reef clip with known true starfish (cached after the first run);
make sure a Mosquitto broker is reachable (start the local one if it is installed but not running, else explain
how to get one); run the real agent on the clip, publishing to the broker, while a real MQTT subscriber prints what
it receives; end after the clip (or Ctrl-C) with a summary.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

logger = logging.getLogger(__name__)

DEVICE_ID = "demo"
_REPO_ROOT = Path(__file__).resolve().parents[1]


class DemoError(RuntimeError):
    """The demo cannot run; the message says what to do."""


def find_bundle(path: Path) -> tuple[Path, list[Path]]:
    """Locate the bundle directory and the public keys committed next to it."""
    candidates = [path, _REPO_ROOT / path] if not path.is_absolute() else [path]
    for base in candidates:
        for bundle in (base, base / "bundle"):
            if (bundle / "manifest.json").is_file():
                keys = sorted({*base.glob("*.pub"), *base.glob("*public*.pem"), *bundle.glob("*.pub")})
                if not keys:
                    raise DemoError(f"found the bundle {bundle} but no public key (*.pub) beside it to verify it")
                return bundle, keys
    raise DemoError(
        f"no demo bundle at {path} (expected {path}/manifest.json or {path}/bundle/manifest.json). It ships with "
        "the repository; from a source checkout you can rebuild one with the export tools (`starfish export --help`)."
    )


# Makes (or finds) the demo clip in a work directory: (video, true distinct starfish or None). Injected by the
# caller, because the synthetic reef generator lives in `train`, which the edge side never imports.
ClipMaker = Callable[[Path, int], tuple[Path, int | None]]


def choose_clip(clip: Path | None, make_clip: ClipMaker | None, workdir: Path, frames: int) -> tuple[Path, int | None]:
    """The user's clip (true count unknown) or one made by `make_clip`; DemoError when there is neither."""
    if clip is not None:
        if not clip.is_file():
            raise DemoError(f"--clip {clip}: no such file")
        return clip, None
    if make_clip is None:
        raise DemoError(
            "no clip generator here (the synthetic reef generator ships with the `train` unit): "
            "give a video with --clip VIDEO"
        )
    return make_clip(workdir, frames)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_broker(
    host: str, port: int, workdir: Path, console: Console, start: bool = True
) -> subprocess.Popen[bytes] | None:
    """Return a Mosquitto we started (to stop later), None if one was already listening; DemoError otherwise."""
    if _port_open(host, port):
        console.print(f"MQTT broker found at {host}:{port}")
        return None
    local = host in ("127.0.0.1", "localhost", "::1")
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not (start and local) or mosquitto is None:
        raise DemoError(
            f"no MQTT broker at {host}:{port}. Get one with any of:\n"
            "  sudo apt-get install mosquitto        (Debian/Ubuntu/Jetson; starts on 1883)\n"
            "  docker run -d -p 1883:1883 eclipse-mosquitto:2 mosquitto -c /mosquitto-no-auth.conf\n"
            "  docker compose -f docker/compose.yaml up -d mosquitto\n"
            "then run `starfish agent demo` again (or pass --broker-host/--broker-port)."
        )
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _port_open(host, port):
            console.print(f"started Mosquitto ({mosquitto}) on {host}:{port} for the demo")
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise DemoError(f"could not start {mosquitto} on port {port} (is the port taken?)")


class DemoSubscriber:
    """A real MQTT client on `starfish/demo/#` that prints what a dashboard would receive."""

    def __init__(self, host: str, port: int, console: Console) -> None:
        import paho.mqtt.client as mqtt

        self.console = console
        self.seqs: set[int] = set()
        self.count_messages = 0
        self.track_events = 0
        self._ready = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="starfish-demo-viewer", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *_a: c.subscribe(f"starfish/{DEVICE_ID}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        topic = msg.topic.removeprefix(f"starfish/{DEVICE_ID}/")
        text = msg.payload.decode("utf-8", errors="replace")
        if topic.endswith("/counts"):
            doc = json.loads(text)
            self.seqs.add(doc["seq"])
            self.count_messages += 1
            boxes = " ".join(f"#{d.get('track_id') or '?'}:{d['score']:.2f}" for d in doc.get("detections") or [])
            self.console.print(
                f"[cyan]<- {topic}[/cyan] seq={doc['seq']} frame={doc['frame']} count={doc['count']} "
                f"unique={doc['unique_count']} {boxes}",
                highlight=False,
            )
        elif topic.endswith("/tracks"):
            self.track_events += 1
            doc = json.loads(text)
            self.console.print(
                f"[magenta]<- {topic}[/magenta] {doc['event']} track #{doc['track_id']} "
                f"frames={doc['frames']} max_score={doc['max_score']}",
                highlight=False,
            )
        elif topic.endswith("/count"):
            return  # the plain-number twin of counts, for dashboards; no need to print it twice
        elif topic == "stats":
            doc = json.loads(text)
            cams = doc.get("cameras", {})
            fps = ", ".join(f"{k} {v.get('processed_fps')} fps" for k, v in cams.items())
            self.console.print(f"[green]<- stats[/green] {fps}, outbox {doc['outbox_depth']}", highlight=False)
        else:
            self.console.print(f"[yellow]<- {topic}[/yellow] {text[:160]}", highlight=False)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_demo(
    host: str,
    port: int,
    frames: int,
    workdir: Path,
    bundle_path: Path,
    *,
    start_broker: bool = True,
    clip: Path | None = None,
    make_clip: ClipMaker | None = None,
) -> int:
    """The `starfish agent demo` command; returns the exit code."""
    from edge_agent.app import StartupError, build_agent
    from edge_agent.cli import print_summary, run_until_signal
    from edge_agent.config import load_config_data

    console = Console()
    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    try:
        bundle, keys = find_bundle(bundle_path)
        console.print(f"demo bundle {bundle} (trusted keys: {', '.join(k.name for k in keys)})")
        # Before the clip: fail fast without a broker.
        broker = ensure_broker(host, port, workdir, console, start=start_broker)
        video, truth = choose_clip(clip, make_clip, workdir, frames)
        console.print(f"clip {video}")
        cfg = load_config_data(
            {
                "device_id": DEVICE_ID,
                "cameras": [{"id": "reef", "source": str(video), "read_mode": "every_frame", "realtime": False}],
                "detector": {"bundle": str(bundle), "trusted_keys": [str(k) for k in keys]},
                "mqtt": {"host": host, "port": port, "stats_interval_s": 5.0},
                "outbox_path": str(workdir / "outbox.sqlite3"),
                "state_dir": str(workdir / "state"),
                "snapshots": {"enabled": True, "directory": str(workdir / "snapshots"), "min_interval_s": 3.0},
            }
        )
        agent = build_agent(cfg)
    except (DemoError, StartupError) as exc:
        # To stderr, unwrapped: the one line that says what to do (the broker hint keeps its own lines).
        Console(stderr=True, soft_wrap=True).print(f"[red]demo cannot start:[/red] {exc}", highlight=False)
        if broker is not None:
            broker.terminate()
        return 2
    viewer = DemoSubscriber(host, port, console)
    try:
        code = run_until_signal(agent, console_interval=None)
        time.sleep(0.5)  # let the last acknowledged messages reach the viewer
    finally:
        viewer.close()
        if broker is not None:
            broker.terminate()
            broker.wait(5)
    summary = agent.summary()
    print_summary(console, summary)
    unique = summary.cameras[0].unique_count
    console.print(
        f"subscriber received {viewer.count_messages} counts messages ({len(viewer.seqs)} distinct seq), "
        f"{viewer.track_events} track events"
    )
    if truth is not None:
        console.print(
            f"unique starfish counted: [bold]{unique}[/bold]  vs true distinct starfish in the clip: "
            f"[bold]{truth}[/bold]  (error {unique - truth:+d})"
        )
    manifest = agent.slot.detector.bundle.manifest
    if manifest.training.checkpoint_sha256 is None:
        console.print(
            "[yellow]note:[/yellow] this demo bundle is untrained (random weights), so its counts are not "
            "meaningful; train and export a model to count starfish for real."
        )
    console.print(f"snapshots with boxes: {workdir / 'snapshots'}")
    return code
