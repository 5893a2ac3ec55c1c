"""A separate process that drives an `UpdateManager`, for tests that kill -9 it mid-step.

``python -m tests.helpers.update_child SPEC.json [--stall-staging]``: SPEC holds the `UpdateConfig` fields plus
``state_dir``, ``bundle_keys``, ``device_id`` and an optional ``announcement`` file to offer first. It prints
``STATE <state>`` lines as the update moves. ``--stall-staging`` lets the unpack write every file, then hangs
before the temporary directory is renamed into place (the worst moment to be killed during staging);
``--stall-swap`` hangs right after the `current` link moved, before probation is recorded.
"""

from __future__ import annotations

import json
import sys
import tarfile
import threading
from pathlib import Path

from edge_agent.update.config import UpdateConfig
from edge_agent.update.manager import UpdateManager


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if "--stall-staging" in sys.argv:
        original = tarfile.TarFile.extractall

        def extract_then_hang(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            original(self, *args, **kwargs)
            print("UNPACKED", flush=True)
            threading.Event().wait()

        tarfile.TarFile.extractall = extract_then_hang  # type: ignore[method-assign]
    if "--stall-swap" in sys.argv:
        from edge_agent.update import staging

        point = staging.point_current

        def point_then_hang(models_dir, target):  # type: ignore[no-untyped-def]
            point(models_dir, target)
            print("SWAPPED", flush=True)
            threading.Event().wait()

        staging.point_current = point_then_hang  # type: ignore[assignment]
    announcement = spec.pop("announcement", None)
    state_dir, keys, device = spec.pop("state_dir"), spec.pop("bundle_keys"), spec.pop("device_id")
    manager = UpdateManager(
        UpdateConfig(**spec),
        state_dir=state_dir,
        bundle_keys=keys,
        device_id=device,
        agent_version="0.1.0",
        report=lambda record, details: print("STATE", record.state.value, details["event"], flush=True),
    )
    manager.resume()
    if announcement:
        manager.offer(Path(announcement).read_bytes())
    record = manager.run()
    print("FINAL", record.state.value if record else "none", flush=True)


if __name__ == "__main__":
    main()
