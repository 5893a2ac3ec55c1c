"""The randomized style's per-video draws: floor, water colour cast, light, turbidity, blur and noise.

Each range is wide on purpose (domain randomization): the detector should find starfish whatever the water and
camera do, so none of these may become a cue. The classic style keeps its own narrow, fixed ranges in render.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Water colour casts (RGB 0..1 of the scattered light): blue, teal, green, yellowish-green, murky grey-blue.
CASTS = ((0.10, 0.35, 0.65), (0.10, 0.50, 0.55), (0.20, 0.55, 0.35), (0.45, 0.55, 0.30), (0.35, 0.42, 0.48))


@dataclass(frozen=True)
class ReefLook:
    """How the floor tile is repainted: mostly sand, rubble or coral garden, in shifted colours."""

    sand_quantile: float  # share of the tile that is not sand (0.2 = mostly sand, 0.95 = almost none)
    coral_density: float  # multiplies the number of coral stamps
    saturation: float  # 0 = grey floor, 1 = palette colours
    hue_shift: int  # OpenCV hue units (0..180)
    brightness: float
    contrast: float


@dataclass(frozen=True)
class WaterLook:
    water: np.ndarray  # BGR veil colour, float32
    beta: np.ndarray  # per-channel attenuation (BGR order as in render.py: applied to the image's channels)
    light: float
    vignette: float
    noise: float  # sensor noise sigma (luma)
    defocus: float  # Gaussian blur sigma in px at 1280 wide (0 = sharp)
    shutter: float  # multiplies the motion blur
    caustics: float
    snow: float  # multiplies the marine-snow particle count


def random_reef_look(rng: np.random.Generator) -> ReefLook:
    floor = rng.choice(3)  # 0 sand flat, 1 rubble, 2 coral garden
    return ReefLook(
        sand_quantile=float((rng.uniform(0.15, 0.5), rng.uniform(0.6, 0.85), rng.uniform(0.85, 0.98))[floor]),
        coral_density=float((rng.uniform(0.1, 0.6), rng.uniform(0.4, 1.0), rng.uniform(1.0, 1.8))[floor]),
        saturation=float(rng.uniform(0.3, 1.3)),
        hue_shift=int(rng.integers(-12, 13)),
        brightness=float(rng.uniform(0.75, 1.25)),
        contrast=float(rng.uniform(0.7, 1.3)),
    )


def repaint(texture: np.ndarray, look: ReefLook) -> np.ndarray:
    """Shift hue, saturation, brightness and contrast of a uint8 BGR floor tile."""
    hsv = cv2.cvtColor(texture, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + look.hue_shift, 180)
    hsv[..., 1] = np.clip(hsv[..., 1] * look.saturation, 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * look.contrast + mean * look.brightness
    return np.clip(out, 0, 255).astype(np.uint8)


def random_water_look(rng: np.random.Generator) -> WaterLook:
    cast = np.array(CASTS[int(rng.integers(len(CASTS)))], np.float32) * rng.uniform(0.7, 1.3, 3).astype(np.float32)
    water = np.clip(cast[::-1] * rng.uniform(0.6, 1.2), 0, 1).astype(np.float32)  # BGR
    # Red is absorbed fastest (channel 2 in BGR); turbidity scales all of it, from clear to murky.
    beta = np.array([0.28, 0.22, 0.8], np.float32) * rng.uniform(0.6, 1.4, 3).astype(np.float32)
    beta *= float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    return WaterLook(
        water=water,
        beta=beta.astype(np.float32),
        light=float(rng.uniform(0.7, 1.6)),
        vignette=float(rng.uniform(0.0, 0.45)),
        noise=float(np.exp(rng.uniform(np.log(0.004), np.log(0.04)))),
        defocus=float(rng.choice([0.0, 1.0], p=[0.4, 0.6]) * rng.uniform(0.4, 2.2)),
        shutter=float(rng.uniform(0.3, 2.5)),
        caustics=float(rng.uniform(0.0, 0.9)),
        snow=float(rng.uniform(0.2, 2.0)),
    )
