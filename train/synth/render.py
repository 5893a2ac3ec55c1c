"""Render one frame of a planned video: floor, starfish, water, caustics, marine snow, motion blur, sensor noise.

`render_frame` is a pure function of (layout, assets, frame index), so frames can be rendered in any order or
process and a seed always gives the same pixels. Besides the image it returns a label map (which starfish each
pixel shows) from which the written boxes are derived, so tests can check every box against drawn pixels.

Box rule. A starfish pixel is one where the warped sprite's starfish coverage is >= 0.5 (spines included) and
neither its own occluding coral, nor a starfish drawn later, nor a distractor lying over it (coverage >= 0.5,
randomized style) covers it. The box is the tight box of those pixels,
which are inside the frame by construction (clipped). The box is written only if it is wider and taller than
1 px and at least `min_visible_fraction` (default 0.4) of the starfish's in-frame pixels are visible: a
starfish mostly hidden under coral gets no box, one cut by the frame edge keeps its box (the cut is not
occlusion). Boxes are measured before motion blur, which smears edges by a few pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from train.synth.camera import SHUTTER
from train.synth.distractors import make_distractor_sprite
from train.synth.noise import torus_window
from train.synth.plan import (
    STREAM_DISTRACTOR_SPRITE,
    STREAM_LOOK,
    STREAM_SPRITE,
    STREAM_STYLE,
    STREAM_TEXTURE,
    VideoLayout,
    stream,
)
from train.synth.randomize import random_reef_look, random_water_look
from train.synth.reef import make_reef_texture
from train.synth.starfish import Sprite, make_starfish_sprite, random_starfish_look

CAUSTIC_DOWNSCALE = 6  # caustics are smooth: evaluate on a 6x coarser grid and upscale
NOISE_FRAMES = 3  # sensor-noise fields cycled through (drawing fresh noise per frame costs more than the rest)


@dataclass(frozen=True)
class Instance:
    """One starfish drawn in a frame. box is (x, y, width, height) of its visible pixels, or None if hidden."""

    track_id: int
    label: int  # value in FrameRender.labels
    box: tuple[int, int, int, int] | None
    visible_pixels: int
    full_pixels: int  # in-frame starfish pixels before any occlusion
    kept: bool  # a box is written for it

    @property
    def visible_fraction(self) -> float:
        return self.visible_pixels / self.full_pixels if self.full_pixels else 0.0


@dataclass
class FrameRender:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    labels: np.ndarray  # (H, W) uint16: 0 = no starfish, else Instance.label
    instances: list[Instance]
    # Pixels a distractor (not a COTS) covers, whether a starfish lies over it or it over a starfish; None when the
    # video has no distractors. Distractors lying over a starfish are never part of its labelled pixels.
    distractor_mask: np.ndarray | None = None

    def mask(self, track_id: int) -> np.ndarray:
        """Bool mask of the visible pixels of one starfish."""
        for inst in self.instances:
            if inst.track_id == track_id:
                return self.labels == inst.label
        raise KeyError(f"track {track_id} is not drawn in this frame")

    @property
    def annotations(self) -> list[dict[str, int]]:
        """Kaggle-style boxes (plus track_id) of the starfish that pass the visibility rule."""
        return [
            {"x": b[0], "y": b[1], "width": b[2], "height": b[3], "track_id": inst.track_id}
            for inst in self.instances
            if inst.kept and (b := inst.box) is not None
        ]


@dataclass
class Particles:
    """Marine snow: positions are a closed-form function of the frame index (no state between frames)."""

    start: np.ndarray  # (n, 2) px
    velocity: np.ndarray  # (n, 2) px per frame, own drift
    parallax: np.ndarray  # (n,) how strongly each particle follows the camera motion
    radius: np.ndarray  # (n,) px
    brightness: np.ndarray  # (n,) 0..1


@dataclass
class VideoAssets:
    texture: np.ndarray  # (S, S, 3) uint8 reef floor, wraps
    sprites: list[tuple[Sprite, Sprite]]  # per track: full and half resolution
    gain: np.ndarray  # (H, W, 3) float32: light x transmission x vignette
    veil: np.ndarray  # (H, W, 3) float32: scattered water colour added on top
    noise: list[np.ndarray]  # NOISE_FRAMES x (H, W, 3) float32
    caustic_waves: np.ndarray  # (7, 4), see caustic_waves()
    caustic_strength: float
    particles: Particles
    particle_colour: tuple[float, float, float]
    cumulative_flow: np.ndarray  # (frames, 2) summed camera motion, moves the marine snow
    distractor_sprites: list[tuple[Sprite, Sprite]] = field(default_factory=list)  # per layout.distractors
    defocus: float = 0.0  # Gaussian blur sigma (px) of the scene before sensor noise; 0 = sharp
    shutter: float = 1.0  # multiplies the camera-motion blur
    # Randomized style: per sequence (a separate dive), a colour/brightness gain (3,) and a haze factor on the veil.
    sequence_looks: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)


def build_assets(layout: VideoLayout) -> VideoAssets:
    """Everything a video's frames share: texture, sprites, light maps. Built once per video (~1-2 s at 720p)."""
    config = layout.config
    width, height = config.width, config.height
    size = layout.texture_size
    randomized = config.style == "randomized"
    # Randomized style: its own streams, so the classic draws below stay exactly as they were.
    reef_look = random_reef_look(stream(config, layout.video_id, STREAM_STYLE, 0)) if randomized else None
    water_look = random_water_look(stream(config, layout.video_id, STREAM_STYLE, 1)) if randomized else None
    texture = make_reef_texture(stream(config, layout.video_id, STREAM_TEXTURE), size, reef_look)
    sprites = []
    for index, track in enumerate(layout.tracks):
        rng = stream(config, layout.video_id, STREAM_SPRITE, index)
        occluder = None
        if track.occluded:
            half = int(np.ceil(track.diameter / 2 * 1.25)) + 2
            ox, oy = _sprite_origin(track, half)
            rows, cols = torus_window(size, oy + half, ox + half, half)
            occluder = texture[np.ix_(rows, cols)]
        look = random_starfish_look(stream(config, layout.video_id, STREAM_STYLE, 2, index)) if randomized else None
        sprite = make_starfish_sprite(rng, track.diameter, occluder, look)
        sprites.append((sprite, sprite.half()))
    distractor_sprites = []
    for index, item in enumerate(layout.distractors):
        rng = stream(config, layout.video_id, STREAM_DISTRACTOR_SPRITE, index)
        sprite = make_distractor_sprite(rng, item.kind, item.diameter)
        distractor_sprites.append((sprite, sprite.half()))

    rng = stream(config, layout.video_id, STREAM_LOOK)
    # Water: blue-green veil; red is absorbed fastest, so the floor loses red with distance.
    water = np.array([rng.uniform(0.50, 0.62), rng.uniform(0.56, 0.70), rng.uniform(0.14, 0.26)], np.float32)
    beta = np.array([0.28, 0.22, 0.8], np.float32) * rng.uniform(0.8, 1.25)
    light = rng.uniform(1.0, 1.35)
    if water_look is not None:
        water, beta, light = water_look.water, water_look.beta, water_look.light
    # Path length through water per image row, relative to the bottom row (grows towards the top).
    rows = np.arange(height, dtype=np.float64)
    h0 = layout.homographies[0]
    left = np.stack([np.full_like(rows, width / 2), rows, np.ones_like(rows)], 1) @ h0.T
    right = np.stack([np.full_like(rows, width / 2 + 1), rows, np.ones_like(rows)], 1) @ h0.T
    per_pixel = np.hypot(*(left[:, :2] / left[:, 2:] - right[:, :2] / right[:, 2:]).T)
    distance = (per_pixel / per_pixel[-1]).astype(np.float32) * rng.uniform(0.9, 1.2)
    transmission = np.exp(-beta[None, :] * distance[:, None])  # (H, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    vignette = (1.0 - (0.22 if water_look is None else water_look.vignette) * r2)[..., None]
    gain = (light * transmission[:, None, :] * vignette).astype(np.float32)
    veil = (water[None, None, :] * (1 - transmission[:, None, :]) * (0.85 + 0.15 * vignette)).astype(np.float32)
    noise = []
    sigma, chroma_sigma = (0.014, 0.006) if water_look is None else (water_look.noise, water_look.noise * 0.43)
    for _ in range(NOISE_FRAMES):
        luma = rng.normal(0, sigma, (height, width, 1)).astype(np.float32)
        chroma = rng.normal(0, chroma_sigma, (height, width, 3)).astype(np.float32)
        noise.append(luma + chroma)

    count = int(260 * width * height / (1280 * 720) * (1.0 if water_look is None else water_look.snow)) + 5
    px_scale = width / 1280
    far = rng.random(count) < 0.85  # most particles are small and sharp; a few big, soft and close
    radius = np.where(far, rng.uniform(0.6, 1.8, count), rng.uniform(3, 9, count)) * max(px_scale, 0.5)
    particles = Particles(
        start=rng.uniform(0, 1, (count, 2)) * [width, height],
        velocity=np.stack([rng.normal(0, 0.4, count), rng.normal(0.3, 0.3, count)], 1) * px_scale * 10 / config.fps,
        parallax=np.where(far, rng.uniform(1.0, 1.4, count), rng.uniform(1.6, 2.5, count)),
        radius=radius,
        brightness=np.where(far, rng.uniform(0.35, 0.9, count), rng.uniform(0.08, 0.22, count)),
    )
    snow = np.clip(water * 1.6 + 0.25, 0, 1)
    waves = caustic_waves(rng, float(rng.uniform(120, 220)))
    caustic_strength = float(rng.uniform(0.35, 0.7))
    if water_look is not None:
        caustic_strength = water_look.caustics
    return VideoAssets(
        texture=texture,
        sprites=sprites,
        gain=gain,
        veil=veil,
        noise=noise,
        caustic_waves=waves,
        caustic_strength=caustic_strength,
        particles=particles,
        particle_colour=tuple(float(c) for c in snow),
        cumulative_flow=np.cumsum(np.concatenate([np.zeros((1, 2)), layout.flow[:-1]]), axis=0),
        distractor_sprites=distractor_sprites,
        defocus=0.0 if water_look is None else water_look.defocus * width / 1280,
        shutter=1.0 if water_look is None else water_look.shutter,
        sequence_looks={} if water_look is None else _sequence_looks(layout),
    )


def _sequence_looks(layout: VideoLayout) -> dict[int, tuple[np.ndarray, float]]:
    """Per-sequence tweaks over the video's water: each pass has its own light, tint and haze."""
    rng = stream(layout.config, layout.video_id, STREAM_STYLE, 3)
    looks = {}
    for seq in layout.sequences:
        tint = rng.uniform(0.9, 1.1, 3) * rng.uniform(0.75, 1.25)  # mostly brightness, a little colour
        looks[seq.sequence_id] = (tint.astype(np.float32), float(rng.uniform(0.6, 1.5)))
    return looks


def _sprite_origin(track, half: int) -> tuple[int, int]:
    """Ground position of sprite pixel (0, 0); sprites are axis-aligned in ground pixels."""
    return int(round(track.ground[0])) - half, int(round(track.ground[1])) - half


def caustics(x: np.ndarray, y: np.ndarray, time: float, waves: np.ndarray) -> np.ndarray:
    """Animated caustic network in [0, 1] at ground positions (px).

    Bright lines are where a random travelling-wave field crosses zero: its zero set is a web of curved lines,
    like light focused by surface ripples. Two fields give the crossing, cell-like pattern. `waves` rows are
    (kx, ky, omega, phase); the first row is the domain warp.
    """
    warp = waves[0]
    wx = x + 0.35 / np.hypot(warp[0], warp[1]) * np.sin(warp[0] * y + warp[1] * x + warp[2] * time + warp[3])
    wy = y + 0.35 / np.hypot(warp[0], warp[1]) * np.cos(warp[1] * y - warp[0] * x + warp[2] * time)
    out = np.zeros_like(x)
    for group in (waves[1:4], waves[4:7]):
        f = np.zeros_like(x)
        for kx, ky, omega, phase in group:
            f += np.sin(kx * wx + ky * wy + omega * time + phase)
        out = np.maximum(out, np.exp(-((f / 0.25) ** 2)))
    return out


def caustic_waves(rng: np.random.Generator, cell: float) -> np.ndarray:
    """Seven random travelling waves of wavelength ~`cell` ground px: one domain warp plus two fields of three."""
    angle = rng.uniform(0, 2 * np.pi, 7)
    k = 2 * np.pi / (cell * rng.uniform(0.7, 1.4, 7))
    return np.stack(
        [
            k * np.cos(angle),
            k * np.sin(angle),
            rng.uniform(0.6, 1.6, 7) * rng.choice([-1, 1], 7),
            rng.uniform(0, 2 * np.pi, 7),
        ],
        axis=1,
    ).astype(np.float32)


def _warp_sprite(
    layout: VideoLayout,
    g: np.ndarray,
    g_inv: np.ndarray,
    sprites: tuple[Sprite, Sprite],
    ground: tuple[float, float],
    diameter: float,
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Warp a ground sprite into the frame: (roi, colour, masks) over the frame's roi, or None if not in view."""
    config = layout.config
    width, height = config.width, config.height
    full, half_res = sprites
    # Far objects use the half-resolution sprite so their spines do not alias.
    centre = g_inv @ np.array([ground[0], ground[1], 1.0])
    side = g_inv @ np.array([ground[0] + 1.0, ground[1], 1.0])
    if centre[2] <= 0 or side[2] <= 0:
        return None
    px_per_ground = np.hypot(*(side[:2] / side[2] - centre[:2] / centre[2]))
    sprite = half_res if px_per_ground < 0.6 else full
    half = int(np.ceil(diameter / 2 * 1.25)) + 2
    ox, oy = int(round(ground[0])) - half, int(round(ground[1])) - half
    sprite_to_ground = np.array([[sprite.scale, 0, ox], [0, sprite.scale, oy], [0, 0, 1.0]])
    h, w = sprite.colour.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) - [0.5, 0.5, 0]
    img = (g_inv @ sprite_to_ground @ corners.T).T
    if (img[:, 2] <= 0).any():
        return None
    img = img[:, :2] / img[:, 2:]
    x0, y0 = np.floor(img.min(axis=0)).astype(int)
    x1, y1 = np.ceil(img.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    # ROI pixel -> sprite pixel
    roi_to_sprite = np.linalg.inv(sprite_to_ground) @ g @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]])
    size = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    colour = cv2.warpPerspective(sprite.colour, roi_to_sprite, size, flags=flags, borderValue=0)
    masks = cv2.warpPerspective(sprite.masks, roi_to_sprite, size, flags=flags, borderValue=0)
    return (int(x0), int(y0), int(x1), int(y1)), colour, masks


def _draw_distractors(
    layout: VideoLayout,
    assets: VideoAssets,
    frame: int,
    image: np.ndarray,
    shown: np.ndarray | None,
    labels: np.ndarray | None = None,
) -> np.ndarray | None:
    """Composite the frame's distractors below the starfish (labels None) or over them (labels given).

    Adds where they show to `shown` (made here if None; None returned when the video has no distractors). One
    lying over a starfish hides it like coral does: its covered pixels stop being starfish pixels.
    """
    if not layout.distractors:
        return None
    config = layout.config
    if shown is None:
        shown = np.zeros((config.height, config.width), bool)
    g = layout.homographies[frame]
    g_inv = np.linalg.inv(g)
    for index in layout.frame_distractors[frame]:
        item = layout.distractors[index]
        if item.on_top != (labels is not None):
            continue
        warped = _warp_sprite(layout, g, g_inv, assets.distractor_sprites[index], item.ground, item.diameter)
        if warped is None:
            continue
        (x0, y0, x1, y1), colour, masks = warped
        roi = image[y0:y1, x0:x1]
        roi *= 1.0 - colour[..., 3:4]
        roi += colour[..., :3]
        cover = masks[..., 0] >= 0.5
        shown[y0:y1, x0:x1] |= cover
        if labels is not None:
            labels[y0:y1, x0:x1][cover] = 0
    return shown


def _draw_starfish(
    layout: VideoLayout, assets: VideoAssets, frame: int, image: np.ndarray, labels: np.ndarray
) -> list[tuple[int, int, tuple[int, int, int, int], int]]:
    """Composite the frame's starfish; returns (track index, label, roi, full pixel count) for each drawn."""
    g = layout.homographies[frame]
    g_inv = np.linalg.inv(g)
    drawn = []
    for label, index in enumerate(layout.frame_tracks[frame], start=1):
        track = layout.tracks[index]
        warped = _warp_sprite(layout, g, g_inv, assets.sprites[index], track.ground, track.diameter)
        if warped is None:
            continue
        (x0, y0, x1, y1), colour, masks = warped
        roi = image[y0:y1, x0:x1]
        roi *= 1.0 - colour[..., 3:4]
        roi += colour[..., :3]
        star = masks[..., 0] >= 0.5
        visible = masks[..., 1] >= 0.5
        lab = labels[y0:y1, x0:x1]
        lab[(colour[..., 3] >= 0.6) & ~visible] = 0  # this sprite's coral hides starfish drawn before it
        lab[visible] = label
        drawn.append((index, label, (x0, y0, x1, y1), int(star.sum())))
    return drawn


def _instances(
    layout: VideoLayout, labels: np.ndarray, drawn: list[tuple[int, int, tuple[int, int, int, int], int]]
) -> list[Instance]:
    """Tight boxes of each starfish's visible pixels, and whether the box is written (see module docs)."""
    config = layout.config
    out = []
    for index, label, (x0, y0, x1, y1), full_pixels in drawn:
        mask = labels[y0:y1, x0:x1] == label
        visible = int(mask.sum())
        box = None
        if visible:
            ys = np.flatnonzero(mask.any(axis=1))
            xs = np.flatnonzero(mask.any(axis=0))
            box = (int(x0 + xs[0]), int(y0 + ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))
        kept = (
            box is not None
            and box[2] > 1
            and box[3] > 1
            and full_pixels > 0
            and visible / full_pixels >= config.min_visible_fraction
        )
        out.append(Instance(layout.tracks[index].track_id, label, box, visible, full_pixels, bool(kept)))
    return out


def _motion_blur(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Average the frame over the camera's motion during the exposure (a line kernel along the image flow).

    The kernel is a handful of integer shifts summed in uint16: ~10x faster than filter2D with a dense kernel
    of the same reach, and indistinguishable after JPEG.
    """
    length = float(np.hypot(*flow)) * SHUTTER
    if length < 1.0:
        return image
    taps = int(np.ceil(length)) + 1
    steps = np.linspace(-0.5, 0.5, taps)[:, None] * (flow / np.hypot(*flow) * length)[None, :]
    shifts = np.round(steps).astype(int)
    pad = int(np.abs(shifts).max())
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    height, width = image.shape[:2]
    acc = np.zeros(image.shape, np.uint16)
    for dx, dy in shifts:
        acc += padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return cv2.convertScaleAbs(acc, alpha=1.0 / taps)


def render_frame(layout: VideoLayout, assets: VideoAssets, frame: int) -> FrameRender:
    """Render frame `frame` (video_frame index) of a planned video."""
    config = layout.config
    width, height = config.width, config.height
    size = layout.texture_size
    g = layout.homographies[frame]

    # 1. Floor: one perspective warp of the wrapping tile. Shift by whole tiles first to keep numbers small.
    centre = g @ np.array([width / 2, height / 2, 1.0])
    shift = np.floor(centre[:2] / centre[2] / size) * size
    to_tile = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]], [0, 0, 1.0]]) @ g
    floor = cv2.warpPerspective(
        assets.texture,
        to_tile,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_WRAP,
    )
    image = floor.astype(np.float32) * np.float32(1 / 255)

    # 2. Starfish (ground objects: they get the same light, water and blur as the floor).
    #    Distractors lie on the floor first; a starfish may sit on one, and then its pixels are starfish.
    distractor_mask = _draw_distractors(layout, assets, frame, image, None)
    labels = np.zeros((height, width), np.uint16)
    drawn = _draw_starfish(layout, assets, frame, image, labels)
    #    Some distractors (fish, loose coral, debris) lie over starfish: partial occlusion by things that are not COTS.
    distractor_mask = _draw_distractors(layout, assets, frame, image, distractor_mask, labels)
    instances = _instances(layout, labels, drawn)

    # 3. Caustics projected on the floor, evaluated coarse in ground coordinates (they stay on the reef while
    #    the camera moves) and animated in time.
    cw, ch = max(2, width // CAUSTIC_DOWNSCALE), max(2, height // CAUSTIC_DOWNSCALE)
    gx, gy = np.meshgrid((np.arange(cw) + 0.5) * width / cw, (np.arange(ch) + 0.5) * height / ch)
    ground = np.stack([gx, gy, np.ones_like(gx)], -1) @ g.T
    ground = ground[..., :2] / ground[..., 2:]
    # float64 on the coarse grid: ground coordinates are large and the waves' phase must stay exact.
    pattern = caustics(ground[..., 0], ground[..., 1], frame / config.fps, assets.caustic_waves.astype(np.float64))
    pattern = pattern.astype(np.float32)
    pattern = cv2.resize(pattern, (width, height), interpolation=cv2.INTER_LINEAR)
    light = 1.0 + assets.caustic_strength * (pattern - 0.2)

    # 4. Water: attenuation (less red, darker with distance), caustic light, scattered veil, sensor noise.
    image *= assets.gain
    image *= light[..., None]
    look = assets.sequence_looks.get(layout.sequence_at(frame).sequence_id)
    if look is None:
        image += assets.veil
    else:
        image *= look[0]
        image += assets.veil * np.float32(look[1])
    if assets.defocus > 0:  # an out-of-focus or soft lens blurs the scene, not the sensor noise
        image = np.asarray(cv2.GaussianBlur(image, (0, 0), assets.defocus), np.float32)
    image += assets.noise[frame % NOISE_FRAMES]
    out = cv2.convertScaleAbs(image, alpha=255.0)

    # 5. Marine snow in the water column, then motion blur of the whole frame from the camera's motion.
    _draw_snow(assets, frame, out, width, height)
    flow = layout.flow[frame] if assets.shutter == 1.0 else layout.flow[frame] * assets.shutter
    out = _motion_blur(out, flow)
    return FrameRender(image=out, labels=labels, instances=instances, distractor_mask=distractor_mask)


def _draw_snow(assets: VideoAssets, frame: int, out: np.ndarray, width: int, height: int) -> None:
    p = assets.particles
    margin = 20.0
    pos = p.start + p.velocity * frame + p.parallax[:, None] * assets.cumulative_flow[frame]
    pos[:, 0] = np.mod(pos[:, 0] + margin, width + 2 * margin) - margin
    pos[:, 1] = np.mod(pos[:, 1] + margin, height + 2 * margin) - margin
    base = np.array(assets.particle_colour, np.float32) * 255
    # Small particles: opaque dots whose colour is pre-blended with the pixel below (cv2.circle cannot blend).
    under = out[np.clip(pos[:, 1].astype(int), 0, height - 1), np.clip(pos[:, 0].astype(int), 0, width - 1)]
    colours = base[None, :] * p.brightness[:, None] + under * (1 - p.brightness[:, None])
    fixed = np.round(pos * 4).astype(int)
    radii = np.maximum(np.round(p.radius * 4).astype(int), 2)
    for i in np.flatnonzero(p.radius <= 2.5):
        cv2.circle(
            out, (int(fixed[i, 0]), int(fixed[i, 1])), int(radii[i]), colours[i].tolist(), -1, cv2.LINE_AA, shift=2
        )
    # Out-of-focus particles close to the lens: faint discs blended over the frame.
    for i in np.flatnonzero(p.radius > 2.5):
        (x, y), r, b = pos[i], p.radius[i], p.brightness[i]
        x0, y0 = max(int(x - r - 1), 0), max(int(y - r - 1), 0)
        x1, y1 = min(int(x + r + 2), width), min(int(y + r + 2), height)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = out[y0:y1, x0:x1]
        disc = np.zeros(roi.shape[:2], np.float32)
        cv2.circle(
            disc,
            (int(fixed[i, 0]) - x0 * 4, int(fixed[i, 1]) - y0 * 4),
            int(radii[i]),
            float(b),
            -1,
            cv2.LINE_AA,
            shift=2,
        )
        roi[...] = np.clip(roi * (1 - disc[..., None]) + base * disc[..., None], 0, 255).astype(np.uint8)
