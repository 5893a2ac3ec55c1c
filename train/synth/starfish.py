"""Crown-of-thorns-like starfish sprites: 10-20 tapering arms, a spiny outline, red/purple/grey tones.

A sprite is drawn once per track (in ground pixels, already rotated) and then only warped into each frame. It
carries its own soft shadow and, for some tracks, a piece of coral drawn over it; the separate `star` and
`visible` coverage channels tell the renderer which pixels are starfish and which of those the coral hides.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SUPERSAMPLE = 2  # draw at 2x and area-downsample: cheap anti-aliasing for the thin spines

# (body, arm tips / spine tips) as RGB. Real COTS range from grey-green through purple to brick red.
PALETTES = (
    ((150, 62, 58), (225, 150, 120)),  # brick red
    ((112, 62, 104), (205, 160, 190)),  # purple
    ((122, 116, 118), (200, 150, 140)),  # grey with reddish spines
    ((168, 84, 54), (235, 180, 120)),  # orange-red
    ((98, 86, 120), (180, 150, 200)),  # blue-purple
    ((120, 88, 76), (190, 120, 110)),  # brown-red
)


@dataclass(frozen=True)
class StarfishLook:
    """How one starfish is drawn in the randomized style; the classic style uses fixed rules instead."""

    arms: int
    body: np.ndarray  # BGR 0..1
    tip: np.ndarray
    curl: float  # radians of swirl at the arm tips (curved arms), 0 = straight
    spine_density: float  # multiplies the classic spine count
    spine_length: tuple[float, float]  # share of the radius
    texture: str  # "mottled", "striped" or "solid"
    relief: float  # strength of the per-arm ridge shading (3-D look), 0..1
    light: float  # strength of the top-left light gradient


def random_starfish_look(rng: np.random.Generator) -> StarfishLook:
    """A look drawn from wide ranges: COTS are grey-green to purple to brick red, with 7-23 arms."""
    body_rgb, tip_rgb = PALETTES[int(rng.integers(len(PALETTES)))]
    # Rotate the palette's hue a little and scale its saturation: many shades, none outside what COTS show.
    shift = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    # Towards grey and darker: many COTS are as dull as the coral around them, so colour must not be the cue.
    grey, dim = rng.uniform(0.0, 0.7), rng.uniform(0.6, 1.1)
    body = _rgb01(body_rgb) * shift
    body = np.clip((body * (1 - grey) + body.mean() * grey) * dim, 0, 1)
    tip = _rgb01(tip_rgb) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    tip = np.clip((tip * (1 - grey) + tip.mean() * grey) * dim, 0, 1)
    return StarfishLook(
        arms=int(rng.integers(7, 24)),
        body=body.astype(np.float32),
        tip=tip.astype(np.float32),
        curl=float(rng.choice([0.0, 1.0]) * np.clip(rng.normal(0, 0.35), -0.7, 0.7)),
        spine_density=float(np.exp(rng.uniform(np.log(0.25), np.log(3.0)))),
        spine_length=(float(rng.uniform(0.02, 0.08)), float(rng.uniform(0.1, 0.22))),
        texture=str(rng.choice(["mottled", "striped", "solid"], p=[0.5, 0.25, 0.25])),
        relief=float(rng.uniform(0.1, 1.0)),
        light=float(rng.uniform(0.0, 0.5)),
    )


def _swirl(layers: list[np.ndarray], c: float, radius: float, curl: float) -> list[np.ndarray]:
    """Bend the arms: rotate each pixel about the centre by an angle growing with its distance (curl at the rim)."""
    big = layers[0].shape[0]
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    dx, dy = xx - c, yy - c
    angle = curl * np.clip(np.hypot(dx, dy) / radius, 0, 1.2) ** 2
    ca, sa = np.cos(angle), np.sin(angle)
    map_x = (c + dx * ca - dy * sa).astype(np.float32)
    map_y = (c + dx * sa + dy * ca).astype(np.float32)
    return [cv2.remap(a, map_x, map_y, cv2.INTER_LINEAR, borderValue=0) for a in layers]


@dataclass(frozen=True)
class Sprite:
    """One starfish (plus shadow and optional occluding coral), axis-aligned in ground pixels.

    colour: premultiplied BGR + alpha, float32 (h, w, 4). masks: (h, w, 2) float32 coverage of the starfish before
    occlusion (channel 0) and of its unoccluded part (channel 1). centre: sprite pixel of the starfish centre.
    """

    colour: np.ndarray
    masks: np.ndarray
    centre: tuple[float, float]
    scale: float = 1.0  # ground pixels per sprite pixel (2.0 for the half-resolution level)

    def half(self) -> Sprite:
        """Half-resolution copy, used where the starfish is far away, so thin spines do not alias."""
        return Sprite(
            colour=cv2.pyrDown(self.colour),
            masks=cv2.pyrDown(self.masks),
            centre=(self.centre[0] / 2.0, self.centre[1] / 2.0),
            scale=self.scale * 2.0,
        )


def _rgb01(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array(rgb[::-1], np.float32) / 255.0


def _outline(rng: np.random.Generator, radius: float, arms: int) -> np.ndarray:
    """Polar radius (samples over 0..2pi) of a many-armed star with uneven, slightly curved arms."""
    theta = np.linspace(0, 2 * np.pi, 1440, endpoint=False)
    disk = radius * rng.uniform(0.34, 0.46)
    r = disk * (1 + 0.04 * np.sin(3 * theta + rng.uniform(0, 6.3)))
    phase = rng.uniform(0, 2 * np.pi)
    half_width = np.pi / arms * rng.uniform(0.75, 0.95)
    for i in range(arms):
        centre = phase + 2 * np.pi * i / arms + rng.normal(0, 0.12 * np.pi / arms)
        length = radius * rng.uniform(0.8, 1.0)
        delta = np.angle(np.exp(1j * (theta - centre)))
        taper = np.clip(1.0 - np.abs(delta) / half_width, 0.0, 1.0) ** rng.uniform(0.55, 0.8)
        r = np.maximum(r, disk + (length - disk) * taper)
    return r


def make_starfish_sprite(
    rng: np.random.Generator,
    diameter: float,
    occluder_ground: np.ndarray | None = None,
    look: StarfishLook | None = None,
) -> Sprite:
    """Draw one starfish of the given diameter (ground px, spines included).

    `occluder_ground`: the reef texture (uint8 BGR) under the sprite; when given, a piece of it is drawn over part
    of the starfish, so the coral that hides it matches the floor around it. `look`: the randomized style's
    drawing (arm count, curl, spines, texture, shading); None draws the classic starfish, byte for byte.
    """
    radius = diameter / 2.0
    half = int(np.ceil(radius * 1.25)) + 2
    size = 2 * half + 1
    ss = SUPERSAMPLE
    big = size * ss
    c = half * ss + ss / 2.0  # centre in supersampled pixels
    if look is None:
        arms = int(rng.integers(10, 21))
        body_rgb, tip_rgb = PALETTES[int(rng.integers(len(PALETTES)))]
        body = _rgb01(body_rgb) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
        tip = _rgb01(tip_rgb) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    else:
        arms, body, tip = look.arms, look.body, look.tip

    # Body silhouette (without spines): polygon from the polar outline; spines add the last ~10 %.
    polar = _outline(rng, radius * 0.95 * ss, arms)
    theta = np.linspace(0, 2 * np.pi, polar.size, endpoint=False)
    points = np.stack([c + polar * np.cos(theta), c + polar * np.sin(theta)], axis=1)
    body_mask = np.zeros((big, big), np.float32)
    cv2.fillPoly(body_mask, [np.round(points * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)

    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    dist = np.hypot(xx - c, yy - c) / (radius * ss)
    # Colour: darker disk centre, lighter towards the arm tips, mottled by tubercles; light from the top-left.
    along = np.clip(dist / 0.85, 0, 1)[..., None]
    colour = body[None, None, :] * (1 - 0.45 * along) + tip[None, None, :] * 0.45 * along
    mottle = cv2.GaussianBlur(rng.uniform(0.6, 1.3, (big, big)).astype(np.float32), (0, 0), 1.0 * ss)
    light = 0.9 + 0.2 * np.clip(((c - xx) * 0.5 + (c - yy) * 0.7) / (radius * ss), -1, 1)
    if look is not None:
        if look.texture == "solid":
            mottle = np.ones_like(mottle)
        elif look.texture == "striped":  # bands across the arms (concentric), as on some banded COTS
            period = radius * ss * rng.uniform(0.12, 0.3)
            mottle = (0.8 + 0.3 * (np.sin(2 * np.pi * dist * radius * ss / period) > 0)).astype(np.float32)
        light = 1 - look.light / 2 + look.light * np.clip(((c - xx) * 0.5 + (c - yy) * 0.7) / (radius * ss), -1, 1)
        if look.curl:
            body_mask, colour = _swirl([body_mask, colour], c, radius * ss, look.curl)
    # Each arm is a rounded ridge: the distance to the silhouette edge makes arms read as separate volumes.
    ridge = cv2.distanceTransform((body_mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    ridge = np.sqrt(np.clip(ridge / max(1.0, 0.12 * radius * ss), 0, 1))
    relief = (0.5 + 0.6 * ridge) if look is None else (1 - 0.5 * look.relief + 0.6 * look.relief * ridge)
    colour = colour * (mottle * light * relief)[..., None]

    # Spines: short light-tipped strokes, radial with jitter; those near the rim make the outline spiky.
    spines = np.zeros((big, big), np.float32)
    spine_colour = colour.copy()
    count = int(arms * (3 + diameter / 10) * (1.0 if look is None else look.spine_density))
    reach = (0.05, 0.13) if look is None else look.spine_length
    inside = np.argwhere(body_mask > 0.5)
    if len(inside):
        picks = inside[rng.integers(len(inside), size=count)]
        thickness = max(1, int(round(ss * max(1.0, diameter / 90))))
        for py, px in picks:
            ang = np.arctan2(py - c, px - c) + rng.normal(0, 0.5)
            length = radius * ss * rng.uniform(*reach)
            ex, ey = px + length * np.cos(ang), py + length * np.sin(ang)
            shade = (0.5 * tip + 0.5 * body) * rng.uniform(0.75, 1.1)
            cv2.line(spine_colour, (int(px), int(py)), (int(ex), int(ey)), shade.tolist(), thickness, cv2.LINE_AA)
            cv2.line(spines, (int(px), int(py)), (int(ex), int(ey)), 1.0, thickness, cv2.LINE_AA)
    star_alpha = np.clip(np.maximum(body_mask, spines), 0, 1)
    colour = np.where(spines[..., None] > body_mask[..., None], spine_colour, colour)

    # Everything is drawn supersampled; area-downsample all layers together.
    def down(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)

    star_alpha = down(star_alpha)
    # Water absorbs red first; real COTS stay visibly red-purple because they are strongly red to begin with.
    star_colour = np.clip(down(colour) * np.float32([1.15, 1.2, 1.6]), 0, 1)
    # Soft contact shadow, offset away from the light.
    shift = np.float32([[1, 0, radius * 0.06], [0, 1, radius * 0.08]])
    shadow = cv2.warpAffine(star_alpha, shift, (size, size))
    shadow = 0.5 * cv2.GaussianBlur(shadow, (0, 0), max(1.0, radius * 0.08))

    premult = star_colour * star_alpha[..., None]
    alpha = star_alpha + (1 - star_alpha) * shadow
    visible = star_alpha.copy()
    if occluder_ground is not None:
        occ = _occluder_mask(rng, size, radius)
        ground = occluder_ground[:size, :size].astype(np.float32) / 255.0
        # Raised coral is a little brighter than the floor it grows from, with a dark rim where it overhangs.
        rim = np.clip(cv2.GaussianBlur(occ, (0, 0), max(1.0, radius * 0.06)) - occ, 0, 1)
        premult = premult * (1 - 0.6 * rim[..., None])
        occ_colour = np.clip(ground * 1.12, 0, 1)
        premult = occ_colour * occ[..., None] + (1 - occ[..., None]) * premult
        alpha = occ + (1 - occ) * alpha
        visible = star_alpha * (1 - occ)
    colour4 = np.concatenate([premult, alpha[..., None]], axis=2).astype(np.float32)
    masks = np.stack([star_alpha, visible], axis=2).astype(np.float32)
    return Sprite(colour=colour4, masks=masks, centre=(half + 0.5, half + 0.5))


def _occluder_mask(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """Coverage (0..1) of coral over the sprite: a boulder edge or a few coral branches across the starfish."""
    mask = np.zeros((size, size), np.float32)
    c = size / 2.0
    if rng.random() < 0.55:
        # A boulder whose edge cuts through the starfish: its centre lies outside, its rim covers 15-55 %.
        ang = rng.uniform(0, 2 * np.pi)
        blob_r = radius * rng.uniform(1.2, 2.5)
        reach = blob_r + radius * rng.uniform(0.1, 0.7)
        centre = (c + reach * np.cos(ang), c + reach * np.sin(ang))
        axes = (blob_r * rng.uniform(0.9, 1.2), blob_r * rng.uniform(0.8, 1.1))
        cv2.ellipse(mask, (centre, (2 * axes[0], 2 * axes[1]), float(rng.uniform(0, 180))), 1.0, -1, cv2.LINE_AA)
    else:
        # Branching coral: a few thick wandering strokes over the starfish.
        for _ in range(int(rng.integers(1, 4))):
            x, y = c + rng.normal(0, radius * 0.5, 2)
            ang = rng.uniform(0, 2 * np.pi)
            width = max(2, int(radius * rng.uniform(0.12, 0.25)))
            for _ in range(int(rng.integers(3, 6))):
                step = radius * rng.uniform(0.25, 0.45)
                nx, ny = x + step * np.cos(ang), y + step * np.sin(ang)
                cv2.line(mask, (int(x), int(y)), (int(nx), int(ny)), 1.0, width, cv2.LINE_AA)
                x, y, ang = nx, ny, ang + rng.normal(0, 0.5)
    return np.clip(mask, 0, 1)
