"""Everything drawn on the reef, as sprites (RGB float colour + alpha + centre), each from its own primitives.

Crown-of-thorns starfish: a body disc and 8-21 tapering arms whose centrelines are quadratic Bezier curves, a
height field from the distance transform (rounded arms, raised disc), spine stippling over the surface and
spines poking out of the silhouette. Distractors, which never get a box: compact coral blobs in muted colours,
sea urchins, smooth blue or knobbly orange five-armed starfish, rocks; coral: branching, lobed, brain and plate
forms. Nothing here is shared with `train.synth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from train.ood.textures import hsv_colour, perlin, shade, worley


@dataclass(frozen=True)
class Sprite:
    """colour (h, w, 3) RGB float 0..1, alpha (h, w) float 0..1; (cx, cy) is the sprite's centre in its pixels."""

    colour: np.ndarray
    alpha: np.ndarray
    cx: float
    cy: float


def _light(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-2.6, -0.5)  # light from above-ish in image terms (negative y)
    return np.array([np.cos(angle) * 0.6, np.sin(angle) * 0.6, 1.0], np.float32)


def _finish(mask: np.ndarray, colour: np.ndarray, soften: float = 0.7) -> Sprite:
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), soften) if soften > 0 else mask.astype(np.float32)
    h, w = mask.shape
    return Sprite(colour.astype(np.float32), np.clip(alpha, 0.0, 1.0), w / 2.0, h / 2.0)


def _dome(mask: np.ndarray, scale: float) -> np.ndarray:
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return np.sqrt(np.clip(dist / max(scale, 1.0), 0.0, 1.0))


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 2) and unit tangents (n, 2) of a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t * t * p2
    tan = 2 * (1 - t) * (p1 - p0) + 2 * t * (p2 - p1)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True) + 1e-9
    return pts, tan


def _arm(
    centre: np.ndarray, angle: float, inner: float, length: float, base_w: float, tip_w: float, bend: float, n: int = 14
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polygon (m, 2) of one tapering arm plus its centreline points and unit normals (for spines)."""
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    p0 = centre + direction * inner * 0.6
    p2 = centre + direction * (inner + length) + normal * bend * length
    p1 = (p0 + p2) / 2 + normal * bend * length * 0.8
    pts, tan = _bezier(p0, p1, p2, n)
    nrm = np.stack([-tan[:, 1], tan[:, 0]], axis=1)
    half = np.linspace(base_w, tip_w, n)[:, None] / 2
    poly = np.concatenate([pts + nrm * half, (pts - nrm * half)[::-1]])
    return poly, pts, nrm * half


# Crown-of-thorns colour families (RGB hue ranges in degrees, saturation, value): purple-grey, maroon, brick red,
# orange-tan, dull blue-grey, greenish grey. Real COTS are all of these.
_COTS_PALETTES = (
    ((270, 320), (0.2, 0.45), (0.35, 0.6)),
    ((330, 360), (0.35, 0.6), (0.3, 0.55)),
    ((0, 20), (0.45, 0.75), (0.45, 0.75)),
    ((20, 40), (0.35, 0.6), (0.5, 0.8)),
    ((200, 240), (0.15, 0.35), (0.35, 0.6)),
    ((60, 110), (0.12, 0.3), (0.35, 0.55)),
)


def crown_of_thorns(rng: np.random.Generator, radius: float) -> Sprite:
    """A crown-of-thorns starfish of about `radius` px (tip to centre), drawn at >= 40 px radius then reduced."""
    draw_r = max(radius, 40.0)
    size = int(np.ceil(draw_r * 2.6)) | 1
    centre = np.array([size / 2.0, size / 2.0])
    mask = np.zeros((size, size), np.uint8)
    arms = int(rng.integers(8, 22))
    body = draw_r * rng.uniform(0.32, 0.5)
    cv2.ellipse(
        mask,
        (int(centre[0]), int(centre[1])),
        (int(body), int(body * rng.uniform(0.85, 1.0))),
        float(rng.uniform(0, 180)),
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
    )
    base_w = 2 * np.pi * body / arms * rng.uniform(0.75, 1.05)
    offset = rng.uniform(0, 2 * np.pi)
    spine_roots: list[np.ndarray] = []
    spine_dirs: list[np.ndarray] = []
    for i in range(arms):
        angle = offset + 2 * np.pi * i / arms + rng.normal(0, 0.35 / arms * np.pi)
        length = (draw_r - body) * rng.uniform(0.75, 1.05) if rng.random() > 0.08 else (draw_r - body) * 0.4
        poly, pts, half = _arm(
            centre, angle, body, length, base_w, base_w * rng.uniform(0.12, 0.3), rng.normal(0, 0.12)
        )
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        spine_roots += [pts + half, pts - half]
        spine_dirs += [half, -half]
    solid = mask >= 128
    # Relief: rounded arms (distance to the edge), the disc raised above them.
    height = _dome(solid, base_w * 0.5) * 0.6
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rr = np.hypot(xx - centre[0], yy - centre[1])
    height += 0.5 * np.clip(1 - rr / (body * 1.1), 0, 1) ** 0.7
    palette = _COTS_PALETTES[int(rng.integers(len(_COTS_PALETTES)))]
    base = hsv_colour(rng, *palette)
    alt = hsv_colour(rng, *palette) * rng.uniform(0.6, 0.9)
    mottle = perlin(rng, size, size, draw_r * rng.uniform(0.12, 0.3)) * 0.5 + 0.5
    albedo = base * (1 - mottle[..., None]) + alt * mottle[..., None]
    # Arms often darker or lighter towards the tips.
    albedo *= (1.0 + rng.uniform(-0.3, 0.2) * np.clip(rr / draw_r, 0, 1))[..., None]
    lit = shade(
        cv2.GaussianBlur(height, (0, 0), 1.2),
        np.clip(albedo, 0, 1),
        _light(rng),
        relief=draw_r * 0.08,
        ambient=0.4,
        specular=0.08,
    )
    # Spine stippling: short bright/dark dots over the body, densest where the relief is high.
    spine_tip = hsv_colour(rng, (0, 60), (0.2, 0.6), (0.65, 0.95))
    ys, xs = np.nonzero(solid)
    count = int(len(ys) / rng.uniform(70, 140))
    pick = rng.integers(0, len(ys), count) if len(ys) else np.zeros(0, np.int64)
    dot = max(1, int(round(draw_r / 60)))
    for k, j in enumerate(pick):
        colour = spine_tip if k % 2 else lit[ys[j], xs[j]] * 0.5
        cv2.circle(lit, (int(xs[j]), int(ys[j])), dot, tuple(float(c) for c in colour), -1, cv2.LINE_AA)
    # Spines poking out of the silhouette along the arm edges (part of the starfish, so part of its mask).
    roots, dirs = np.concatenate(spine_roots), np.concatenate(spine_dirs)
    chosen = rng.random(len(roots)) < 0.4
    spine_len = draw_r * rng.uniform(0.05, 0.11)
    thick = max(1, int(round(draw_r / 45)))
    for root, d in zip(roots[chosen], dirs[chosen], strict=True):
        unit = d / (np.linalg.norm(d) + 1e-9)
        end = root + unit * spine_len * rng.uniform(0.6, 1.2)
        a, b = (int(root[0]), int(root[1])), (int(end[0]), int(end[1]))
        cv2.line(mask, a, b, 255, thick, cv2.LINE_AA)
        tone = spine_tip * 0.9 if rng.random() < 0.5 else base * 0.75
        cv2.line(lit, a, b, tuple(float(c) for c in tone), thick, cv2.LINE_AA)
    sprite = _finish(mask >= 100, lit, soften=0.6)
    return _resize(sprite, radius / draw_r)


def _resize(sprite: Sprite, factor: float) -> Sprite:
    if abs(factor - 1.0) < 1e-6:
        return sprite
    h, w = sprite.alpha.shape
    size = (max(3, int(round(w * factor))), max(3, int(round(h * factor))))
    colour = cv2.resize(sprite.colour, size, interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(sprite.alpha, size, interpolation=cv2.INTER_AREA)
    return Sprite(colour, alpha, size[0] / 2.0, size[1] / 2.0)


def _radial_blob(
    rng: np.random.Generator, radius: float, size: int, harmonics: int = 4, wobble: float = 0.18
) -> np.ndarray:
    """Mask of a smooth star-convex blob: r(theta) = radius * (1 + sum a_k cos(k theta + phi_k))."""
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 2 + harmonics):
        r += rng.normal(0, wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.45, 1.5) * radius
    pts = np.stack([size / 2 + r * np.cos(theta), size / 2 + r * np.sin(theta) * rng.uniform(0.7, 1.0)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return mask >= 128


# Muted, low-saturation coral colours that a detector trained on one renderer mistakes for starfish.
_MUTED = (
    ((330, 360), (0.12, 0.35), (0.55, 0.85)),  # pink
    ((280, 320), (0.1, 0.3), (0.45, 0.75)),  # mauve
    ((0, 360), (0.0, 0.08), (0.45, 0.8)),  # grey
    ((15, 35), (0.25, 0.5), (0.3, 0.6)),  # brown
    ((55, 85), (0.25, 0.5), (0.35, 0.6)),  # olive
    ((45, 60), (0.2, 0.45), (0.7, 0.9)),  # pale yellow
)


def coral_blob(rng: np.random.Generator, radius: float) -> Sprite:
    """A compact, smooth coral/sponge lump in a muted colour, sometimes with polyp pores."""
    size = int(radius * 3.2) | 1
    mask = _radial_blob(rng, radius, size)
    albedo = np.broadcast_to(hsv_colour(rng, *_MUTED[int(rng.integers(len(_MUTED)))]), (size, size, 3)).copy()
    grain = perlin(rng, size, size, max(3.0, radius * 0.3))
    albedo *= (1 + 0.12 * grain)[..., None]
    height = _dome(mask, radius * 0.8)
    if rng.random() < 0.5:
        dist, _ = worley(rng, size, size, max(3.0, radius / 4))
        height -= 0.15 * np.exp(-dist / 1.5)
    lit = shade(height, np.clip(albedo, 0, 1), _light(rng), relief=radius * 0.25, ambient=0.45, specular=0.1)
    return _finish(mask, lit)


def urchin(rng: np.random.Generator, radius: float) -> Sprite:
    """A sea urchin: a dark test and long thin radiating spines."""
    size = int(radius * 2.4) | 1
    c = size // 2
    mask = np.zeros((size, size), np.uint8)
    body = radius * rng.uniform(0.3, 0.45)
    colour = np.zeros((size, size, 3), np.float32)
    tint = hsv_colour(rng, (250, 330), (0.2, 0.5), (0.05, 0.2))
    for _ in range(int(rng.integers(40, 90))):
        a = rng.uniform(0, 2 * np.pi)
        length = radius * rng.uniform(0.6, 1.0)
        end = (int(c + np.cos(a) * length), int(c + np.sin(a) * length))
        cv2.line(mask, (c, c), end, 255, 1, cv2.LINE_AA)
    cv2.circle(mask, (c, c), int(body), 255, -1, cv2.LINE_AA)
    colour[:] = tint
    height = _dome(mask >= 128, body)
    lit = shade(height, colour, _light(rng), relief=body * 0.3, ambient=0.6, specular=0.35, shininess=30)
    return _finish(mask >= 100, lit, soften=0.4)


def other_starfish(rng: np.random.Generator, radius: float) -> Sprite:
    """A hard negative: a smooth five-armed starfish, blue (Linckia-like) or orange with dark knobs."""
    size = int(radius * 2.6) | 1
    centre = np.array([size / 2.0, size / 2.0])
    mask = np.zeros((size, size), np.uint8)
    blue = rng.random() < 0.5
    body = radius * (rng.uniform(0.12, 0.2) if blue else rng.uniform(0.3, 0.42))
    base_w = radius * (rng.uniform(0.22, 0.3) if blue else rng.uniform(0.4, 0.55))
    offset = rng.uniform(0, 2 * np.pi)
    for i in range(5):
        poly, _, _ = _arm(
            centre,
            offset + 2 * np.pi * i / 5,
            body,
            radius - body,
            base_w,
            base_w * rng.uniform(0.5, 0.8),
            rng.normal(0, 0.15),
        )
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    cv2.circle(mask, (int(centre[0]), int(centre[1])), int(body * 1.2 + base_w / 2), 255, -1, cv2.LINE_AA)
    solid = mask >= 128
    if blue:
        colour = hsv_colour(rng, (200, 225), (0.55, 0.85), (0.55, 0.9))
    else:
        colour = hsv_colour(rng, (15, 35), (0.7, 0.95), (0.75, 1.0))
    albedo = np.broadcast_to(colour, (size, size, 3)).copy()
    height = _dome(solid, base_w * 0.5)
    lit = shade(height, albedo, _light(rng), relief=radius * 0.12, ambient=0.45, specular=0.2)
    if not blue:
        ys, xs = np.nonzero(solid)
        for j in rng.integers(0, len(ys), max(1, len(ys) // 250)):
            cv2.circle(lit, (int(xs[j]), int(ys[j])), max(1, int(radius / 25)), (0.25, 0.12, 0.06), -1, cv2.LINE_AA)
    return _finish(solid, lit)


def rock(rng: np.random.Generator, radius: float) -> Sprite:
    """A rock or rubble slab: an irregular polygon textured with Worley cells and speckle."""
    size = int(radius * 3.0) | 1
    n = int(rng.integers(6, 11))
    theta = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.65, 1.2, n)
    pts = np.stack([size / 2 + r * np.cos(theta), size / 2 + r * np.sin(theta) * rng.uniform(0.5, 0.9)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    solid = mask >= 128
    grey = hsv_colour(rng, (20, 60), (0.05, 0.25), (0.3, 0.6))
    dist, labels = worley(rng, size, size, max(4.0, radius / 3))
    cell_tone = rng.uniform(0.8, 1.15, labels.max() + 1).astype(np.float32)[labels]
    albedo = grey * cell_tone[..., None] * (1 + 0.1 * rng.standard_normal((size, size, 1)).astype(np.float32))
    height = _dome(solid, radius * 0.6) * 0.8 + 0.05 * np.sqrt(dist)
    lit = shade(height, np.clip(albedo, 0, 1), _light(rng), relief=radius * 0.3, ambient=0.35, specular=0.05)
    return _finish(solid, lit)


def branching_coral(rng: np.random.Generator, radius: float, colour: np.ndarray | None = None) -> Sprite:
    """Staghorn-like coral seen from above: recursive branches of decreasing thickness with pale tips."""
    size = int(radius * 2.4) | 1
    mask = np.zeros((size, size), np.uint8)
    height = np.zeros((size, size), np.float32)
    tips: list[tuple[int, int]] = []
    base_thick = max(2.0, radius * rng.uniform(0.06, 0.1))

    def grow(x: float, y: float, angle: float, length: float, thick: float, depth: int) -> None:
        x2, y2 = x + np.cos(angle) * length, y + np.sin(angle) * length
        t = max(1, int(round(thick)))
        cv2.line(mask, (int(x), int(y)), (int(x2), int(y2)), 255, t, cv2.LINE_AA)
        cv2.line(height, (int(x), int(y)), (int(x2), int(y2)), float(depth + 1), t, cv2.LINE_AA)
        if depth <= 0 or length < 3:
            tips.append((int(x2), int(y2)))
            return
        for _ in range(int(rng.integers(2, 4))):
            grow(x2, y2, angle + rng.normal(0, 0.6), length * rng.uniform(0.55, 0.8), thick * 0.75, depth - 1)

    c = size / 2
    for i in range(int(rng.integers(3, 7))):
        grow(c, c, rng.uniform(0, 2 * np.pi) + i, radius * rng.uniform(0.3, 0.45), base_thick, int(rng.integers(2, 4)))
    if colour is None:
        colour = hsv_colour(rng, *_MUTED[int(rng.integers(len(_MUTED)))])
    tip_colour = np.clip(colour * 1.25 + 0.1, 0, 1)
    albedo = np.broadcast_to(colour, (size, size, 3)).copy()
    for x, y in tips:
        cv2.circle(albedo, (x, y), max(1, int(base_thick * 0.5)), tuple(float(v) for v in tip_colour), -1)
    height = cv2.GaussianBlur(height, (0, 0), max(1.0, base_thick * 0.4)).astype(np.float32)
    lit = shade(height, albedo, _light(rng), relief=2.0, ambient=0.4, specular=0.12)
    return _finish(mask >= 128, lit)


def lobed_coral(rng: np.random.Generator, radius: float) -> Sprite:
    """Massive lobed coral: a union of overlapping bumps, each its own dome, sharing one colour."""
    size = int(radius * 2.6) | 1
    mask = np.zeros((size, size), bool)
    height = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(4, 10))):
        r = radius * rng.uniform(0.25, 0.5)
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius - r)
        cx, cy = size / 2 + np.cos(a) * d, size / 2 + np.sin(a) * d
        bump = np.clip(1 - ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r), 0, 1)
        mask |= bump > 0
        height = np.maximum(height, np.sqrt(bump))
    colour = hsv_colour(rng, *_MUTED[int(rng.integers(len(_MUTED)))])
    albedo = colour * (1 + 0.15 * perlin(rng, size, size, max(3.0, radius * 0.2)))[..., None]
    lit = shade(height, np.clip(albedo, 0, 1), _light(rng), relief=radius * 0.3, ambient=0.4, specular=0.1)
    return _finish(mask, lit)


def brain_coral(rng: np.random.Generator, radius: float) -> Sprite:
    """Brain coral: a dome covered in meandering ridges (a thresholded, domain-warped gradient-noise field)."""
    size = int(radius * 2.6) | 1
    mask = _radial_blob(rng, radius, size, wobble=0.08)
    warp = perlin(rng, size, size, max(4.0, radius * 0.5)) * 6.0
    ridges = np.sin(perlin(rng, size, size, max(4.0, radius * 0.35)) * 18.0 + warp)
    height = _dome(mask, radius * 0.9) * 1.5 + 0.12 * ridges
    colour = hsv_colour(rng, (30, 90), (0.2, 0.5), (0.4, 0.75))
    albedo = colour * (1 + 0.15 * ridges)[..., None]
    lit = shade(height, np.clip(albedo, 0, 1), _light(rng), relief=radius * 0.2, ambient=0.4, specular=0.1)
    return _finish(mask, lit)


def plate_coral(rng: np.random.Generator, radius: float) -> Sprite:
    """Table coral: a flat ellipse with radial growth lines and a pale rim."""
    size = int(radius * 2.4) | 1
    c = size / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    squash = rng.uniform(0.55, 0.95)
    rr = np.hypot(xx - c, (yy - c) / squash) / radius
    theta = np.arctan2(yy - c, xx - c)
    edge = 1 + 0.08 * perlin(rng, size, size, max(3.0, radius * 0.25))
    mask = rr < edge
    colour = hsv_colour(rng, (40, 200), (0.15, 0.4), (0.4, 0.7))
    lines = 0.5 + 0.5 * np.sin(theta * rng.uniform(40, 90))
    albedo = colour * (0.85 + 0.2 * lines)[..., None] * (1 + 0.35 * np.clip(rr - 0.8, 0, 1))[..., None]
    height = 0.3 * np.clip(1 - rr, 0, 1) + 0.02 * lines
    lit = shade(height, np.clip(albedo, 0, 1), _light(rng), relief=radius * 0.2, ambient=0.5, specular=0.05)
    return _finish(mask, lit)


def sea_fan(rng: np.random.Generator, radius: float) -> Sprite:
    """A foreground frond (gorgonian / soft coral) that passes in front of starfish: sparse and dark-ish."""
    colour = hsv_colour(rng, (0, 360), (0.2, 0.5), (0.2, 0.5))
    return branching_coral(rng, radius, colour)


CORAL_KINDS = (branching_coral, lobed_coral, brain_coral, plate_coral)
DISTRACTOR_KINDS = (coral_blob, urchin, other_starfish, rock)
