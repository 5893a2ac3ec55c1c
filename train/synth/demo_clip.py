"""The demo's clip: a short synthetic reef video with a known number of distinct starfish.

`starfish agent demo` lives on the edge side, which never imports `train`; the `starfish` command line (the one
place that sees every unit) hands this function to the demo (see `starfish_cli.py`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from train.synth.writer import generate_dataset

logger = logging.getLogger(__name__)


def demo_clip(workdir: Path, frames: int) -> tuple[Path, int | None]:
    """A cached synthetic 1280x720 clip under `workdir` and its true distinct starfish count (made on first use)."""
    out = workdir / f"clip-{frames}-1280x720"
    video, meta = out / "videos" / "video_0.mp4", out / "synth.json"
    if video.is_file() and meta.is_file():
        logger.info("using cached synthetic clip %s", video)
    else:
        logger.info("generating a %d-frame synthetic reef clip in %s (first run only) ...", frames, out)
        started = time.monotonic()
        # The camera's 1280x720 with the generator's usual starfish sizes: the detector's own domain. The seed is
        # fixed so counts are comparable between runs and bundles.
        generate_dataset(
            out, videos=1, frames=frames, width=1280, height=720, seed=7, empty_fraction=0.3, overwrite=True, workers=1
        )
        logger.info("clip ready in %.0f s", time.monotonic() - started)
    truth = json.loads(meta.read_text()).get("videos", [{}])[0].get("distinct_starfish")
    return video, truth
