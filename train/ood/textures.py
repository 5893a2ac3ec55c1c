"""Procedural fields for the out-of-distribution renderer: gradient (Perlin) noise, Worley cells, shading.

Written from scratch for `train.ood` (nothing shared with `train.synth`, whose value-noise tiles and dome stamps
the shipped detector has learned): gradient noise is computed on a coarse grid and upsampled, Worley cells come
from OpenCV's labelled distance transform, and relief is lit with a Lambert + Blinn specular model from a height
field.
"""

from __future__ import annotations

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Gradient noise in about [-1, 1], shape (height, width), feature size `cell` px.

    Large cells are evaluated on a reduced grid (8 samples per cell) and resized: same look, far less work.
    """
    step = max(1.0, cell / 8.0)
    h, w = max(2, int(np.ceil(height / step)) + 1), max(2, int(np.ceil(width / step)) + 1)
    c = cell / step
    gy, gx = int(h / c) + 2, int(w / c) + 2
    angle = rng.uniform(0, 2 * np.pi, (gy, gx))
    gxs, gys = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    ys, xs = np.arange(h, dtype=np.float32) / c, np.arange(w, dtype=np.float32) / c
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    Y0, X0 = y0[:, None], x0[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gxs[Y0 + dy, X0 + dx] * (fx - dx) + gys[Y0 + dy, X0 + dx] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    field = (top * (1 - v) + bottom * v) * 1.41
    if step > 1.0:
        field = cv2.resize(field, (int(round(w * step)), int(round(h * step))), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(field[:height, :width], dtype=np.float32)


def turbulence(
    rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 4, gain: float = 0.5
) -> np.ndarray:
    """Fractal sum of gradient-noise octaves, normalised to about [-1, 1]."""
    total = np.zeros((height, width), np.float32)
    amp, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amp * perlin(rng, height, width, max(cell, 2.0))
        norm += amp
        amp *= gain
        cell /= 2.0
    return total / norm


def worley(rng: np.random.Generator, height: int, width: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Worley (cellular) field: (distance to the nearest feature point in px, cell label 1..n) per pixel."""
    count = max(1, int(height * width / (spacing * spacing)))
    seeds = np.full((height, width), 255, np.uint8)
    ys, xs = rng.integers(0, height, count), rng.integers(0, width, count)
    seeds[ys, xs] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    return dist, labels


def shade(
    height_field: np.ndarray,
    albedo: np.ndarray,
    light: np.ndarray,
    *,
    relief: float = 1.0,
    ambient: float = 0.35,
    specular: float = 0.15,
    shininess: float = 18.0,
) -> np.ndarray:
    """Light an albedo (H, W, 3, float 0..1) over a height field: ambient + Lambert + Blinn-Phong highlight."""
    gy, gx = np.gradient(height_field.astype(np.float32) * relief)
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    nx, ny, nz = -gx / norm, -gy / norm, 1.0 / norm
    lx, ly, lz = light / np.linalg.norm(light)
    lambert = np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)
    hx, hy, hz = lx, ly, lz + 1.0  # half vector with the viewer straight above
    hn = np.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.clip((nx * hx + ny * hy + nz * hz) / hn, 0.0, 1.0) ** shininess
    lit = albedo * (ambient + (1.0 - ambient) * lambert)[..., None] + specular * spec[..., None]
    return np.clip(lit, 0.0, 1.0).astype(np.float32)


def hsv_colour(
    rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    """One RGB colour (float 0..1) drawn from HSV ranges (hue in degrees, may wrap past 360)."""
    h = (rng.uniform(*hue) % 360.0) / 60.0
    s, v = rng.uniform(*sat), rng.uniform(*val)
    i, f = int(h) % 6, h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32)


def composite(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend `patch` (h, w, 3 float) with `alpha` (h, w) into `canvas` at top-left (x, y), clipped."""
    h, w = alpha.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - a
    region += a * patch[y0 - y : y1 - y, x0 - x : x1 - x]
