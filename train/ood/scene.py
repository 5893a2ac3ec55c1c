"""Plan and build the scenes of the out-of-distribution renderer: camera passes, starfish, reef canvas, optics.

The camera is a similarity transform (translate + zoom + roll) over a flat reef canvas, with handheld jitter
(an AR(1) wobble in position and roll) on top of a smooth path; some passes hover and zoom instead of travelling.
Each sequence (one pass) has its own canvas, its own starfish and its own water. Planning is cheap and
deterministic; building a sequence's assets (canvas, sprites, optics maps) is the costly part and happens once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from train.ood import sprites
from train.ood.config import OodConfig
from train.ood.sprites import Sprite
from train.ood.textures import composite, hsv_colour, perlin, turbulence, worley

MARGIN = 140  # canvas px around the swept area, so sprites near the edge are whole and warps never run out
SCENE_KINDS = ("empty", "sparse", "normal", "outbreak")
SCENE_WEIGHTS = (0.15, 0.3, 0.3, 0.25)


def stream(config: OodConfig, *keys: int) -> np.random.Generator:
    """An independent random stream for one purpose, a pure function of the seed and the keys."""
    return np.random.default_rng([config.seed, 0x00D, *keys])


@dataclass(frozen=True)
class Starfish:
    """One crown-of-thorns starfish on the canvas; it crawls and turns slowly."""

    track_id: int
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float
    radius: float  # canvas px

    def pose(self, t: int) -> tuple[float, float, float]:
        return self.x + self.vx * t, self.y + self.vy * t, self.angle + self.spin * t


@dataclass
class SequencePlan:
    sequence_id: int
    index: int  # position of the sequence in the whole dataset (keys its random streams)
    start: int  # first video frame
    frames: int
    kind: str
    canvas_size: tuple[int, int]  # (width, height)
    cam_x: np.ndarray  # (frames,) canvas coordinates of the point at the image centre
    cam_y: np.ndarray
    zoom: np.ndarray  # image px per canvas px
    roll: np.ndarray  # radians
    starfish: list[Starfish] = field(default_factory=list)

    def affine(self, t: int, width: int, height: int) -> np.ndarray:
        """2x3 canvas -> image transform of local frame t."""
        s, r = float(self.zoom[t]), float(self.roll[t])
        c, n = np.cos(r) * s, np.sin(r) * s
        cx, cy = float(self.cam_x[t]), float(self.cam_y[t])
        return np.array([[c, -n, width / 2 - (c * cx - n * cy)], [n, c, height / 2 - (n * cx + c * cy)]])


@dataclass
class VideoPlan:
    video_id: int
    frames: int
    sequences: list[SequencePlan]

    def sequence_at(self, frame: int) -> SequencePlan:
        for seq in self.sequences:
            if seq.start <= frame < seq.start + seq.frames:
                return seq
        raise IndexError(frame)


def _lengths(rng: np.random.Generator, frames: int, mean: int) -> list[int]:
    lengths: list[int] = []
    left = frames
    while left > 0:
        n = int(np.clip(rng.normal(mean, mean * 0.3), max(5, mean // 3), mean * 2))
        n = left if left - n < max(5, mean // 3) else n
        lengths.append(n)
        left -= n
    return lengths


def _camera(config: OodConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Camera path in relative canvas coordinates: (x, y, zoom, roll) per frame."""
    t = np.arange(n, dtype=np.float64)
    base = np.exp(rng.uniform(np.log(0.6), np.log(1.5)))
    # Slow zoom (a diver closing in or backing off over 8-20 s): faster breathing would make small starfish jump
    # further between frames than any tracker, or annotator, would follow.
    amp, period, phase = rng.uniform(0.0, 0.2), rng.uniform(8.0, 20.0) * config.fps, rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(-0.25, 0.25)
    zoom = np.clip(base * np.exp(amp * np.sin(2 * np.pi * t / period + phase) + drift * t / max(n, 1)), 0.55, 1.8)
    hover = rng.random() < 0.25
    # A starfish takes 6-20 s to cross the frame (hovering: ~40-120 s); at most two frame widths per pass keeps
    # the canvas small.
    crossing = rng.uniform(40, 120) if hover else rng.uniform(6, 20)
    travel = min(n / (crossing * config.fps), 2.0) * config.width / base
    heading = rng.uniform(0, 2 * np.pi)
    # Smooth speed profile (slow-fast-slow or steady) along a gently curving heading.
    progress = t / max(n - 1, 1)
    progress = progress + rng.uniform(-0.12, 0.12) * np.sin(np.pi * progress)
    turn = heading + rng.normal(0, 0.4) * progress
    step = np.gradient(progress) * travel
    x = np.cumsum(np.cos(turn) * step)
    y = np.cumsum(np.sin(turn) * step)
    # Handheld jitter: AR(1) in image px, converted to canvas px at the current zoom.
    jitter = np.zeros((n, 3))
    sigma = np.array([rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0), rng.uniform(0.0, 0.003)])
    for k in range(1, n):
        jitter[k] = 0.85 * jitter[k - 1] + rng.normal(0, 1, 3) * sigma
    x += jitter[:, 0] / zoom
    y += jitter[:, 1] / zoom
    roll = rng.uniform(-np.pi, np.pi) + rng.normal(0, 0.15) * progress + jitter[:, 2]
    return x, y, zoom, roll


def _image_to_canvas(seq: SequencePlan, t: int, points: np.ndarray, width: int, height: int) -> np.ndarray:
    inverse = cv2.invertAffineTransform(seq.affine(t, width, height))
    return points @ inverse[:, :2].T + inverse[:, 2]


def _place_starfish(config: OodConfig, seq: SequencePlan, rng: np.random.Generator, first_id: int) -> None:
    w, h = config.width, config.height
    counts = {
        "empty": 0,
        "sparse": int(rng.integers(1, 5)),
        "normal": int(rng.integers(4, 11)),
        "outbreak": int(rng.integers(25, 60)),
    }
    count = counts[seq.kind]
    base_zoom = float(np.median(seq.zoom))
    centres: list[np.ndarray] = []
    if seq.kind == "outbreak":  # clustered, so single frames hold 10-40
        clusters = [
            (int(rng.integers(seq.frames)), rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h]))
            for _ in range(int(rng.integers(1, 4)))
        ]
    placed: list[Starfish] = []
    for i in range(count):
        small = rng.random() < 0.3
        high = min(30.0, config.effective_max_size) if small else config.effective_max_size
        low = config.min_size if small else min(max(config.min_size, 24), high)
        diameter = float(np.exp(rng.uniform(np.log(low), np.log(max(low, high)))))
        if seq.kind == "outbreak":
            frame, centre = clusters[int(rng.integers(len(clusters)))]
            point = centre + rng.normal(0, [0.22 * w, 0.22 * h])
        elif placed and rng.random() < 0.2:
            # An overlapping neighbour: starfish aggregate and pile onto each other.
            other = placed[int(rng.integers(len(placed)))]
            gap = (other.radius + diameter / 2 / base_zoom) * rng.uniform(0.45, 0.9)
            a = rng.uniform(0, 2 * np.pi)
            centres.append(np.array([other.x + np.cos(a) * gap, other.y + np.sin(a) * gap]))
            point = None
        else:
            frame = int(rng.integers(seq.frames))
            point = rng.uniform([-0.05 * w, -0.05 * h], [1.05 * w, 1.05 * h])  # some start cut by the frame edge
        if point is not None:
            centres.append(_image_to_canvas(seq, frame, point[None], w, h)[0])
        cx, cy = centres[-1]
        speed, heading = rng.uniform(0, 0.35), rng.uniform(0, 2 * np.pi)
        placed.append(
            Starfish(
                first_id + i,
                float(cx),
                float(cy),
                float(np.cos(heading) * speed),
                float(np.sin(heading) * speed),
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.normal(0, 0.004)),
                diameter / 2 / base_zoom,
            )
        )
    seq.starfish = placed


def plan_video(config: OodConfig, video_id: int, first_index: int, first_track_id: int) -> VideoPlan:
    """Lay out one video: its sequences (camera passes), their cameras and starfish. Cheap and deterministic."""
    rng = stream(config, video_id, 0)
    sequences: list[SequencePlan] = []
    start, track = 0, first_track_id
    for k, n in enumerate(_lengths(rng, config.frames, config.sequence_length)):
        index = first_index + k
        srng = stream(config, video_id, 1, index)
        x, y, zoom, roll = _camera(config, srng, n)
        # Canvas bounds: every frame's footprint plus a margin.
        kind = str(srng.choice(SCENE_KINDS, p=SCENE_WEIGHTS))
        if k == 0 and kind == "empty":  # every video shows starfish, so its unique count is never 0 of 0
            kind = "sparse"
        seq = SequencePlan(50000 + index, index, start, n, kind, (0, 0), x, y, zoom, roll)
        corners = np.array([[0, 0], [config.width, 0], [0, config.height], [config.width, config.height]], float)
        pts = np.concatenate([_image_to_canvas(seq, t, corners, config.width, config.height) for t in range(n)])
        lo = pts.min(0) - MARGIN
        hi = pts.max(0) + MARGIN
        seq.cam_x, seq.cam_y = x - lo[0], y - lo[1]
        seq.canvas_size = (int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1])))
        _place_starfish(config, seq, srng, track)
        track += len(seq.starfish)
        sequences.append(seq)
        start += n
    return VideoPlan(video_id, config.frames, sequences)


def plan_dataset(config: OodConfig) -> list[VideoPlan]:
    """Every video's plan; sequence ids and track ids are unique across the dataset."""
    plans: list[VideoPlan] = []
    index, track = 0, 1
    for video in range(config.videos):
        plan = plan_video(config, video, index, track)
        index += len(plan.sequences)
        track += sum(len(s.starfish) for s in plan.sequences)
        plans.append(plan)
    return plans


@dataclass
class Placed:
    """A sprite placed on the canvas at (x, y) with a rotation."""

    sprite: Sprite
    x: float
    y: float
    angle: float


@dataclass
class SequenceAssets:
    canvas: np.ndarray  # (H, W, 3) uint8 RGB reef floor with corals and distractors baked in
    starfish: dict[int, Sprite]  # track id -> sprite
    occluders: list[Placed]  # fronds drawn over the starfish
    transmission: np.ndarray  # (h, w, 3) float32 water transmission per image pixel and channel
    veil: np.ndarray  # (h, w, 3) float32 backscatter added on top
    light: np.ndarray  # (h, w) float32 illumination (sun patch, vignetting)
    defocus: float
    noise: float
    gamma: float
    gains: np.ndarray  # (3,) imperfect white balance
    shutter: float


def _floor(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Sand with ripples, patches of Worley rubble; float32 RGB."""
    sand_a = hsv_colour(rng, (30, 60), (0.15, 0.4), (0.55, 0.85))
    sand_b = hsv_colour(rng, (40, 100), (0.1, 0.35), (0.35, 0.6))
    mix = np.clip(turbulence(rng, h, w, rng.uniform(150, 400), 4) * 0.9 + 0.5, 0, 1)[..., None]
    floor = sand_a * (1 - mix) + sand_b * mix
    heading = rng.uniform(0, np.pi)
    # Broadcast a row and a column rather than two full grids: canvases reach ~15 Mpx.
    xx, yy = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    phase = (xx * np.cos(heading) + yy * np.sin(heading)) / rng.uniform(10, 30) * 2 * np.pi
    ripples = np.sin(phase + 5 * perlin(rng, h, w, 120.0))
    floor *= (1 + rng.uniform(0.02, 0.1) * ripples)[..., None]
    dist, labels = worley(rng, h, w, rng.uniform(7, 18))
    tone = rng.uniform(0.55, 1.1, labels.max() + 1).astype(np.float32)[labels]
    pebble = np.clip(1.1 - np.sqrt(dist) / 4.0, 0.3, 1.0) * tone
    rubble_colour = hsv_colour(rng, (20, 70), (0.05, 0.3), (0.35, 0.7))
    patch = np.clip((turbulence(rng, h, w, rng.uniform(200, 500), 3) - rng.uniform(-0.2, 0.3)) * 4, 0, 1)
    floor = floor * (1 - patch[..., None]) + (rubble_colour * pebble[..., None]) * patch[..., None]
    return np.clip(floor, 0, 1).astype(np.float32)


def _stamp(canvas: np.ndarray, sprite: Sprite, x: float, y: float, shadow: float) -> None:
    """Drop shadow (offset, blurred, multiplicative) and then the sprite, centred at (x, y)."""
    ox, oy = int(round(x - sprite.cx)), int(round(y - sprite.cy))
    if shadow > 0:
        blur = max(1.0, sprite.alpha.shape[0] * 0.05)
        soft = cv2.GaussianBlur(sprite.alpha, (0, 0), blur) * shadow
        off = int(sprite.alpha.shape[0] * 0.06) + 1
        composite(canvas, np.zeros_like(sprite.colour), soft, ox + off, oy + off)
    composite(canvas, sprite.colour, sprite.alpha, ox, oy)


def _rotate(sprite: Sprite, angle: float) -> Sprite:
    h, w = sprite.alpha.shape
    m = cv2.getRotationMatrix2D((sprite.cx, sprite.cy), float(np.degrees(angle)), 1.0)
    colour = cv2.warpAffine(sprite.colour, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    alpha = cv2.warpAffine(sprite.alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return Sprite(colour, alpha, sprite.cx, sprite.cy)


def _optics(config: OodConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Water (Beer-Lambert transmission + backscatter veil) and illumination maps in image space."""
    w, h = config.width, config.height
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Range grows towards the top of the frame (the camera looks slightly forward), with patchy turbidity.
    distance = rng.uniform(0.3, 2.0) + rng.uniform(0.0, 2.0) * (1 - yy / h)
    distance = distance * (1 + 0.25 * perlin(rng, h, w, max(w, h) * 0.5))
    attenuation = np.array([rng.uniform(0.35, 0.7), rng.uniform(0.08, 0.25), rng.uniform(0.05, 0.2)], np.float32)
    attenuation *= rng.uniform(0.5, 1.3)
    transmission = np.exp(-distance[..., None] * attenuation)
    water = hsv_colour(rng, (165, 215), (0.35, 0.8), (0.25, 0.6))
    veil = water * (1 - transmission)
    sun = (rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.5, 0.7) * h)
    reach = rng.uniform(0.5, 1.4) * max(w, h)
    patch = np.exp(-((xx - sun[0]) ** 2 + (yy - sun[1]) ** 2) / (2 * reach * reach))
    vignette = 1 - rng.uniform(0.1, 0.45) * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2
    light = (rng.uniform(0.6, 0.9) + rng.uniform(0.2, 0.6) * patch) * vignette
    return transmission.astype(np.float32), veil.astype(np.float32), light.astype(np.float32)


def build_sequence(config: OodConfig, seq: SequencePlan) -> SequenceAssets:
    """Draw one sequence's canvas (floor, corals, distractors) and sprites; set its water and camera optics."""
    rng = stream(config, seq.index, 2)
    cw, ch = seq.canvas_size
    canvas = _floor(rng, cw, ch)
    area = cw * ch
    scale = float(np.median(seq.zoom))
    for _ in range(int(area / rng.uniform(160, 320) ** 2)):  # corals, from rubble-sized to large heads
        kind = sprites.CORAL_KINDS[int(rng.integers(len(sprites.CORAL_KINDS)))]
        sprite = _rotate(kind(rng, float(rng.uniform(18, 120))), float(rng.uniform(0, 2 * np.pi)))
        _stamp(canvas, sprite, rng.uniform(0, cw), rng.uniform(0, ch), rng.uniform(0.2, 0.5))
    for _ in range(int(area / rng.uniform(110, 220) ** 2)):  # distractors: never labelled
        k = int(rng.choice(len(sprites.DISTRACTOR_KINDS), p=(0.55, 0.15, 0.08, 0.22)))
        # Coral blobs 25-70 px across on screen: the false positives seen on out-of-distribution clips.
        radius = {0: rng.uniform(12.5, 35), 1: rng.uniform(10, 30), 2: rng.uniform(15, 50), 3: rng.uniform(8, 45)}[k]
        sprite = sprites.DISTRACTOR_KINDS[k](rng, float(radius / scale))
        _stamp(
            canvas,
            _rotate(sprite, float(rng.uniform(0, 2 * np.pi))),
            rng.uniform(0, cw),
            rng.uniform(0, ch),
            rng.uniform(0.2, 0.45),
        )
    starfish = {
        s.track_id: sprites.crown_of_thorns(stream(config, seq.index, 3, s.track_id), s.radius) for s in seq.starfish
    }
    occluders = []
    for s in seq.starfish:
        if rng.random() < 0.2:
            a, d = rng.uniform(0, 2 * np.pi), s.radius * rng.uniform(0.6, 1.4)
            occluders.append(
                Placed(
                    sprites.sea_fan(rng, float(s.radius * rng.uniform(0.6, 1.2))),
                    s.x + np.cos(a) * d,
                    s.y + np.sin(a) * d,
                    float(rng.uniform(0, 2 * np.pi)),
                )
            )
    transmission, veil, light = _optics(config, rng)
    return SequenceAssets(
        canvas=(np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8),
        starfish=starfish,
        occluders=occluders,
        transmission=transmission,
        veil=veil,
        light=light,
        defocus=float(rng.choice([0.0, 0.6, 1.0, 1.6])),
        noise=float(rng.uniform(0.004, 0.03)),
        gamma=float(rng.uniform(0.85, 1.15)),
        gains=rng.uniform(0.85, 1.2, 3).astype(np.float32),
        shutter=float(rng.uniform(0.2, 0.6)),
    )
