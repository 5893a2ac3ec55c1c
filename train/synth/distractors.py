"""Things on the reef that are not crown-of-thorns starfish and never carry a box (randomized style).

The detector trained on the classic reef scored ~1.00 on compact, smooth, muted coral-like blobs, so those come
first and most often; sea urchins (dark spiky balls), other starfish species (smooth five-armed Linckia, puffy
cushion stars), rocks, debris and fish-like shapes are the other hard negatives. Each is a sprite in ground pixels,
like a starfish sprite, so it sits on the floor and moves with it; its masks say where it covers the floor (used by
tests to check that distractor pixels are never labelled starfish).
"""

from __future__ import annotations

import cv2
import numpy as np

from train.synth.starfish import Sprite

# Kind -> weight. Blobs dominate: they were the false positives.
KINDS = {"blob": 0.42, "urchin": 0.12, "linckia": 0.12, "cushion": 0.06, "rock": 0.1, "debris": 0.1, "fish": 0.08}
# Muted, low-saturation colours of the false positives (RGB): pink, mauve, grey, brown, olive, pale yellow.
MUTED = ((196, 150, 160), (160, 120, 150), (140, 136, 132), (140, 104, 80), (130, 128, 80), (210, 200, 150))


def pick_kind(rng: np.random.Generator) -> str:
    names = list(KINDS)
    weights = np.array([KINDS[k] for k in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _bgr01(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, np.float32)[::-1] / 255.0


def _random_colour(rng: np.random.Generator, muted_bias: float = 0.6) -> np.ndarray:
    """BGR 0..1: usually one of the muted colours, jittered; otherwise any hue at any saturation."""
    if rng.random() < muted_bias:
        base = np.array(MUTED[int(rng.integers(len(MUTED)))], np.float32) * rng.uniform(0.8, 1.15, 3)
        return np.clip(_bgr01(base), 0, 1)
    hsv = np.array([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(60, 250)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32) / 255.0


def _polar_blob(rng: np.random.Generator, c: float, radius: float, lumpiness: float) -> np.ndarray:
    """Outline points (n, 2) of a smooth lumpy blob: the radius wobbles with a few low harmonics."""
    theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0, lumpiness / np.sqrt(k)) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.65, 1.0)
    angle = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * radius, r * np.sin(theta) * radius * aspect
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([c + x * ca - y * sa, c + x * sa + y * ca], axis=1)


def _fill(mask: np.ndarray, points: np.ndarray) -> None:
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)


def _dome(mask: np.ndarray, strength: float, light: tuple[float, float]) -> np.ndarray:
    """3-D shading of a filled shape: brighter inside and towards the light, darker at the rim."""
    inside = (mask > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth = np.sqrt(depth / max(1.0, float(depth.max())))
    gy, gx = np.gradient(depth)
    directional = np.clip(0.5 + 4.0 * (gx * light[0] + gy * light[1]), 0, 1)
    return (1 - strength) + strength * (0.55 * depth + 0.45 * directional) * 1.3


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multiplicative surface texture: smooth (the false positives), fine polyp speckle or coarse mottling."""
    kind = rng.choice(3, p=[0.5, 0.25, 0.25])
    if kind == 0:
        return np.ones((size, size), np.float32)
    sigma = 0.8 if kind == 1 else max(1.5, size / 12)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigma)
    scale = rng.uniform(0.05, 0.25) / max(1e-6, float(noise.std()))
    return (1 + scale * noise).astype(np.float32)


def make_distractor_sprite(rng: np.random.Generator, kind: str, diameter: float) -> Sprite:
    """Draw one distractor of the given kind and diameter (ground px) with a soft contact shadow."""
    radius = diameter / 2.0
    half = int(np.ceil(radius * 1.3)) + 2
    size = 2 * half + 1
    c = half + 0.5
    mask = np.zeros((size, size), np.float32)
    colour = _random_colour(rng)
    light = (-0.6, -0.8)
    shading_strength = rng.uniform(0.2, 0.8)
    details = np.zeros((size, size), np.float32)  # dark marks painted over the body (pores, stripes, eyes)
    if kind == "blob":
        for _ in range(1 if rng.random() < 0.6 else int(rng.integers(2, 5))):  # single or lobed
            offset = rng.normal(0, radius * 0.25, 2) if _ else np.zeros(2)
            _fill(mask, _polar_blob(rng, c, radius * rng.uniform(0.55, 0.95), rng.uniform(0.05, 0.3)) + offset)
        if rng.random() < 0.3:  # sponge pores
            for _ in range(int(rng.integers(1, 8))):
                px, py = c + rng.normal(0, radius * 0.35, 2)
                cv2.circle(details, (int(px), int(py)), max(1, int(radius * rng.uniform(0.05, 0.15))), 1.0, -1)
    elif kind == "cushion":
        theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        r = radius * (0.8 + 0.12 * np.cos(5 * (theta + rng.uniform(0, 1))))
        _fill(mask, np.stack([c + r * np.cos(theta), c + r * np.sin(theta)], 1))
        colour = _bgr01(np.array([(220, 120, 60), (200, 90, 70), (210, 180, 110)][int(rng.integers(3))]))
        shading_strength = rng.uniform(0.5, 0.9)
    elif kind == "linckia":
        arms = int(rng.choice([4, 5, 5, 5, 6]))
        width = max(1.5, radius * rng.uniform(0.12, 0.22))
        phase = rng.uniform(0, 2 * np.pi)
        for i in range(arms):
            ang = phase + 2 * np.pi * i / arms + rng.normal(0, 0.1)
            bend = rng.normal(0, 0.25)
            pts = [(c, c)]
            for t in np.linspace(0.2, 1.0, 5):
                a = ang + bend * t
                pts.append((c + t * radius * 0.95 * np.cos(a), c + t * radius * 0.95 * np.sin(a)))
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
                cv2.line(
                    mask,
                    (int(x0 * 16), int(y0 * 16)),
                    (int(x1 * 16), int(y1 * 16)),
                    1.0,
                    max(1, int(2 * width)),
                    cv2.LINE_AA,
                    shift=4,
                )
        cv2.circle(mask, (int(c * 16), int(c * 16)), int(width * 1.3 * 16), 1.0, -1, cv2.LINE_AA, shift=4)
        # Linckia are famously blue; orange, red and cream species too.
        colour = _bgr01(
            np.array(
                [(40, 90, 200), (70, 120, 210), (230, 120, 40), (200, 60, 50), (225, 200, 160)][int(rng.integers(5))],
                np.float32,
            )
            * rng.uniform(0.8, 1.1, 3)
        )
    elif kind == "urchin":
        body_r = radius * rng.uniform(0.3, 0.45)
        cv2.circle(mask, (int(c * 16), int(c * 16)), int(body_r * 16), 1.0, -1, cv2.LINE_AA, shift=4)
        for _ in range(int(rng.integers(40, 120))):
            ang = rng.uniform(0, 2 * np.pi)
            length = radius * rng.uniform(0.7, 1.0)
            cv2.line(
                mask,
                (int(c), int(c)),
                (int(c + length * np.cos(ang)), int(c + length * np.sin(ang))),
                1.0,
                1,
                cv2.LINE_AA,
            )
        colour = np.full(3, rng.uniform(0.05, 0.2), np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    elif kind == "rock":
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = radius * rng.uniform(0.6, 1.0, n)
        _fill(mask, np.stack([c + r * np.cos(angles), c + r * np.sin(angles)], 1))
        grey = rng.uniform(0.3, 0.7)
        colour = np.clip(np.full(3, grey, np.float32) * rng.uniform(0.85, 1.15, 3), 0, 1).astype(np.float32)
        shading_strength = rng.uniform(0.5, 0.9)
    elif kind == "debris":
        for _ in range(int(rng.integers(1, 4))):  # sticks, shell shards, dead branches
            ang = rng.uniform(0, np.pi)
            length = radius * rng.uniform(0.5, 1.0)
            dx, dy = length * np.cos(ang), length * np.sin(ang)
            ox, oy = rng.normal(0, radius * 0.2, 2)
            cv2.line(
                mask,
                (int(c - dx + ox), int(c - dy + oy)),
                (int(c + dx + ox), int(c + dy + oy)),
                1.0,
                max(1, int(radius * rng.uniform(0.06, 0.25))),
                cv2.LINE_AA,
            )
    elif kind == "fish":
        angle = rng.uniform(0, 360)
        body = ((c, c), (2 * radius * 0.75, 2 * radius * rng.uniform(0.25, 0.45)), angle)
        cv2.ellipse(mask, body, 1.0, -1, cv2.LINE_AA)
        a = np.deg2rad(angle)
        tail = np.array([[c - 0.7 * radius * np.cos(a), c - 0.7 * radius * np.sin(a)]])
        spread = np.array([-np.sin(a), np.cos(a)]) * radius * 0.35
        back = np.array([c - 1.0 * radius * np.cos(a), c - 1.0 * radius * np.sin(a)])
        _fill(mask, np.concatenate([tail, [back + spread], [back - spread]]))
        if rng.random() < 0.5:  # stripes
            for s in np.linspace(-0.4, 0.3, int(rng.integers(2, 5))):
                p = np.array([c + s * radius * np.cos(a), c + s * radius * np.sin(a)])
                cv2.line(
                    details,
                    tuple(int(v) for v in p - spread),
                    tuple(int(v) for v in p + spread),
                    1.0,
                    max(1, int(radius * 0.08)),
                )
        colour = _random_colour(rng, muted_bias=0.3)
    else:
        raise ValueError(f"unknown distractor kind {kind!r} (known: {', '.join(KINDS)})")

    mask = np.clip(mask, 0, 1)
    shade = _dome(mask, shading_strength, light) * _texture(rng, size)
    body = colour[None, None, :] * shade[..., None]
    body = body * (1 - 0.6 * (details * mask)[..., None])
    body = np.clip(body, 0, 1)
    shift = np.array([[1, 0, radius * 0.08], [0, 1, radius * 0.1]], np.float32)
    shadow = 0.45 * cv2.GaussianBlur(cv2.warpAffine(mask, shift, (size, size)), (0, 0), max(1.0, radius * 0.1))
    alpha = mask + (1 - mask) * shadow
    colour4 = np.concatenate([body * mask[..., None], alpha[..., None]], axis=2).astype(np.float32)
    masks = np.stack([mask, mask], axis=2).astype(np.float32)
    return Sprite(colour=colour4, masks=masks, centre=(c, c))
