"""Synthetic reef video generator (torch-free: numpy + OpenCV, so the edge demo can use it too).

    from train.synth import generate_dataset
    summary = generate_dataset("data/synth", videos=3, frames=100, seed=0)

Frame-level API for tests and demos: `plan_dataset(config)` -> layouts, `build_assets(layout)`,
`render_frame(layout, assets, frame)` -> FrameRender (image, per-pixel starfish labels, boxes).
"""

from train.synth.config import DEFAULT_EMPTY_FRACTION, GENERATOR_VERSION, SynthConfig
from train.synth.plan import VideoLayout, plan_dataset
from train.synth.render import FrameRender, Instance, VideoAssets, build_assets, render_frame
from train.synth.writer import SynthSummary, VideoSummary, generate_dataset

__all__ = [
    "DEFAULT_EMPTY_FRACTION",
    "GENERATOR_VERSION",
    "FrameRender",
    "Instance",
    "SynthConfig",
    "SynthSummary",
    "VideoAssets",
    "VideoLayout",
    "VideoSummary",
    "build_assets",
    "generate_dataset",
    "plan_dataset",
    "render_frame",
]
