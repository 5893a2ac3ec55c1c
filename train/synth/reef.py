"""A seamless reef-floor texture: sand, rubble and coral at several scales, lit from above.

The texture is built once per video as a height field plus an albedo (colour) map; shading from the height
field's normals and a cheap ambient-occlusion term give the coral heads volume. The camera later pans over this
tile (it wraps), so the per-frame cost is a single perspective warp.
"""

from __future__ import annotations

import cv2
import numpy as np

from train.synth.noise import fbm, tile_noise, torus_window, wrap_filter
from train.synth.randomize import ReefLook, repaint

# Reef colours as RGB 0..255 before the water's colour cast. The water later removes most of the red, which is
# why these look warmer than the final frames.
SAND = (205, 192, 160)
ROCK = ((128, 118, 104), (104, 98, 92), (150, 140, 122))
CORAL = (
    (124, 112, 62),  # olive
    (146, 104, 72),  # brown
    (176, 126, 140),  # pink
    (124, 92, 134),  # purple (a distractor: starfish are purple-red too)
    (184, 164, 96),  # yellow-brown
    (92, 124, 84),  # green
    (136, 154, 162),  # pale blue-grey
    (76, 64, 58),  # dark
    (168, 150, 128),  # bleached
)


def _bgr(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array(rgb[::-1], np.float32) / 255.0


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float = 0.12) -> np.ndarray:
    return np.clip(_bgr(colour) * rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32), 0, 1)


def _stamp(
    height: np.ndarray,
    albedo: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    peak: float,
    colour: np.ndarray,
    rng: np.random.Generator,
    *,
    aspect: float = 1.0,
    plateau: bool = False,
    detail: np.ndarray | None = None,
) -> None:
    """Raise a lumpy dome (or a flat-topped plate) on the torus; where it is the highest surface, paint it."""
    size = height.shape[0]
    # The wobble below can push the outline ~35 % beyond `radius`; the window must hold all of it.
    half = int(np.ceil(radius * max(1.0, aspect) * 1.45)) + 1
    yy, xx = _grid(half)
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx * ca + yy * sa) / (radius * aspect)
    v = (-xx * sa + yy * ca) / radius
    d2 = u * u + v * v
    if radius >= 4:
        # Irregular outline: the radius wobbles with a few random harmonics of the polar angle. (Small stamps
        # skip it: invisible at their size, and it is most of their cost.)
        theta = np.arctan2(v, u)
        wobble = np.ones_like(theta)
        for k in (2, 3, 5, 7):
            wobble += rng.uniform(0.0, 0.18 / np.sqrt(k)) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        d2 = d2 / (wobble * wobble)
    if plateau:
        profile = np.sqrt(np.clip((1.0 - d2) * 5.0, 0.0, 1.0))
    else:
        profile = np.sqrt(np.maximum(1.0 - d2, 0.0))
    inside = profile > 0
    y0, x0 = int(cy) - half, int(cx) - half
    if 0 <= y0 and y0 + 2 * half + 1 <= size and 0 <= x0 and x0 + 2 * half + 1 <= size:
        # Fast path: the window does not cross the tile's edge, so plain slices (views) work.
        window: tuple = (slice(y0, y0 + 2 * half + 1), slice(x0, x0 + 2 * half + 1))
    else:
        rows, cols = torus_window(size, int(cy), int(cx), half)
        window = np.ix_(rows, cols)
    current = height[window]
    base = current[inside].max() if plateau and inside.any() else 0.0
    candidate = (base if plateau else current) + peak * profile
    top = inside & (candidate > current)
    if not top.any():
        return
    new = current.copy()
    new[top] = candidate[top]
    height[window] = new
    paint = albedo[window]
    shade = 1.0 if detail is None else detail[window][top][:, None]
    paint[top] = colour[None, :] * shade
    albedo[window] = paint


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached pixel offsets (-half..half) of a stamp window."""
    if half not in _GRIDS:
        _GRIDS[half] = tuple(np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32))
    return _GRIDS[half]


def make_reef_texture(rng: np.random.Generator, size: int, look: ReefLook | None = None) -> np.ndarray:
    """Return a (size, size, 3) uint8 BGR reef-floor tile that wraps seamlessly in both directions.

    The structure is built at half resolution (4x cheaper; underwater footage is soft anyway) and upscaled, then
    a full-resolution grain is added so the floor close to the camera does not look smeared. `size` must be a
    multiple of 256. `look` (randomized style) sets how much sand and coral there is and repaints the colours;
    None is the classic floor.
    """
    if size % 256:
        raise ValueError(f"reef texture size must be a multiple of 256, got {size}")
    full = size
    size = full // 2
    s = 0.5  # lengths below are in full-resolution ground pixels
    area_scale = (full / 2048.0) ** 2
    sand_noise = fbm(rng, size, (256, 128, 64, 32))
    base = fbm(rng, size, (256, 128, 64, 32, 16, 8))
    height = (0.25 * base).astype(np.float32)

    # Albedo: rock/rubble everywhere, sand in the low channels between coral.
    rock_mix = fbm(rng, size, (128, 32, 8))
    albedo = np.where((rock_mix > 0.1)[..., None], _bgr(ROCK[0])[None, None, :], _bgr(ROCK[1])[None, None, :]).astype(
        np.float32
    )
    quantile = rng.uniform(0.55, 0.8)
    sand_level = np.quantile(sand_noise, quantile if look is None else look.sand_quantile)
    density = 1.0 if look is None else look.coral_density
    sand = np.clip((sand_noise - sand_level) * 6.0, 0.0, 1.0)
    albedo = albedo * (1 - sand[..., None]) + _bgr(SAND)[None, None, :] * sand[..., None]
    # Sand ripples: a gently bent sine, only in sandy parts.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ripple_dir = rng.uniform(0, np.pi)
    period = rng.uniform(40, 70) * s
    # An integer number of periods per tile keeps the ripples seamless.
    cycles = max(1, round(size / period))
    phase = (xx * np.cos(ripple_dir) + yy * np.sin(ripple_dir)) * (2 * np.pi * cycles / size)
    ripples = np.sin(phase + 3.0 * tile_noise(rng, size, 64))
    height += 0.012 * ripples * sand
    height -= 0.12 * sand

    # Two shared surface details: ridged "brain coral" meanders and fine polyp speckle.
    ridges = 1.0 - np.abs(fbm(rng, size, (8, 4)))
    speckle = tile_noise(rng, size, 2)
    brain = (0.72 + 0.4 * ridges**3).astype(np.float32)
    rough = (0.85 + 0.15 * speckle).astype(np.float32)

    # Avoid sand when placing coral: sample positions by rejection against the sand mask.
    def spot() -> tuple[float, float]:
        for _ in range(8):
            y, x = rng.uniform(0, size, 2)
            if sand[int(y), int(x)] < 0.5:
                return y, x
        return tuple(rng.uniform(0, size, 2))

    # Rubble first (smallest, lowest), then soft corals, boulders, plates and branching clusters on top.
    for _ in range(int(2200 * area_scale)):
        y, x = rng.uniform(0, size, 2)
        _stamp(
            height,
            albedo,
            y,
            x,
            rng.uniform(2, 6) * s,
            rng.uniform(0.02, 0.05),
            _jitter(rng, ROCK[rng.integers(len(ROCK))], 0.25),
            rng,
            aspect=rng.uniform(0.6, 1.6),
        )
    for _ in range(int(260 * area_scale * density)):
        y, x = spot()
        _stamp(
            height,
            albedo,
            y,
            x,
            rng.uniform(10, 40) * s,
            rng.uniform(0.05, 0.12),
            _jitter(rng, CORAL[rng.integers(len(CORAL))]),
            rng,
            aspect=rng.uniform(0.7, 1.5),
            detail=rough,
        )
    for _ in range(int(170 * area_scale * density)):
        y, x = spot()
        radius = float(np.exp(rng.uniform(np.log(18), np.log(110)))) * s
        _stamp(
            height,
            albedo,
            y,
            x,
            radius,
            radius / (260.0 * s) + rng.uniform(0.05, 0.15),
            _jitter(rng, CORAL[rng.integers(len(CORAL))]),
            rng,
            aspect=rng.uniform(0.7, 1.4),
            detail=brain if rng.random() < 0.6 else rough,
        )
    for _ in range(int(12 * area_scale * density)):
        y, x = spot()
        _stamp(
            height,
            albedo,
            y,
            x,
            rng.uniform(40, 120) * s,
            rng.uniform(0.15, 0.3),
            _jitter(rng, CORAL[rng.integers(len(CORAL))]),
            rng,
            aspect=rng.uniform(0.8, 1.6),
            plateau=True,
            detail=rough,
        )
    for _ in range(int(90 * area_scale * density)):
        cy, cx = spot()
        colour = _jitter(rng, CORAL[rng.integers(len(CORAL))])
        spread = rng.uniform(25, 90) * s
        for _ in range(int(spread / s * rng.uniform(0.5, 1.0))):
            r, a = spread * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            _stamp(
                height,
                albedo,
                cy + r * np.sin(a),
                cx + r * np.cos(a),
                rng.uniform(2.5, 7) * s,
                rng.uniform(0.15, 0.35),
                colour * rng.uniform(0.85, 1.2),
                rng,
                aspect=rng.uniform(0.7, 2.5),
            )

    # Lighting: Lambert from the normals of the height field plus a cavity (ambient occlusion) term.
    relief = 60.0 * s
    gx = wrap_filter(height, 2, lambda a: cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)) * relief
    gy = wrap_filter(height, 2, lambda a: cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)) * relief
    light = np.array([-0.35, -0.45, 0.82], np.float32)
    light /= np.linalg.norm(light)
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    lambert = np.clip((-gx * light[0] - gy * light[1] + light[2]) / norm, 0.0, 1.0)
    blurred = wrap_filter(height, 24, lambda a: cv2.GaussianBlur(a, (0, 0), 12 * s))
    occlusion = np.clip(1.0 - 3.0 * np.maximum(blurred - height, 0.0), 0.35, 1.0)
    shade = (0.3 + 0.85 * lambert) * occlusion * (0.92 + 0.08 * speckle)
    texture = albedo * shade[..., None]
    # Living reef is less saturated than the palette: pull colours a third of the way towards their grey.
    grey = texture.mean(axis=2, keepdims=True)
    texture = grey + 0.65 * (texture - grey)
    texture = cv2.resize(
        np.pad(texture, ((2, 2), (2, 2), (0, 0)), mode="wrap"), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC
    )[4:-4, 4:-4]
    grain = 0.9 + 0.1 * tile_noise(rng, full, 2) + 0.06 * tile_noise(rng, full, 8)
    texture *= grain[..., None]
    out = np.clip(texture * 255.0, 0, 255).astype(np.uint8)
    return out if look is None else repaint(out, look)
