"""Seamless (tileable) noise and stamping helpers used to build reef textures."""

from __future__ import annotations

import cv2
import numpy as np


def tile_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] of shape (size, size) that wraps around at the edges.

    A periodic random grid is padded by wrapping before the bicubic upscale, so the seam matches exactly.
    """
    cells = max(1, size // cell)
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    pad = 2
    padded = np.pad(grid, pad, mode="wrap")
    step = size / cells
    big = cv2.resize(padded, (int(round((cells + 2 * pad) * step)),) * 2, interpolation=cv2.INTER_CUBIC)
    start = int(round(pad * step))
    return big[start : start + size, start : start + size]


def fbm(rng: np.random.Generator, size: int, cells: tuple[int, ...], gain: float = 0.55) -> np.ndarray:
    """Fractal sum of tileable noise octaves (largest cell first), normalised to roughly [-1, 1]."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for cell in cells:
        out += amp * tile_noise(rng, size, cell)
        total += amp
        amp *= gain
    return out / total


def wrap_filter(image: np.ndarray, pad: int, fn) -> np.ndarray:
    """Apply an OpenCV filter as if the image were a torus (OpenCV filters do not offer BORDER_WRAP)."""
    padded = np.pad(image, ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2), mode="wrap")
    return fn(padded)[pad:-pad, pad:-pad]


def torus_window(size: int, cy: int, cx: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a (2*half+1)^2 window centred at (cy, cx) on a size x size torus."""
    offsets = np.arange(-half, half + 1)
    return (cy + offsets) % size, (cx + offsets) % size
