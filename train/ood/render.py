"""Render one frame of the out-of-distribution renderer, keeping a per-pixel label map of the starfish.

Order: reef canvas through the camera's similarity transform; starfish (each warped into just its own region);
foreground fronds over them; then the optics, in linear light: illumination, Beer-Lambert water with backscatter,
camera motion blur along the image motion, defocus, marine snow, sensor noise, imperfect white balance and gamma.
Boxes come from the label map before any blur: the tight box of each starfish's visible pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from train.ood.config import OodConfig
from train.ood.scene import SequenceAssets, SequencePlan, VideoPlan, stream
from train.ood.sprites import Sprite

MIN_VISIBLE_PIXELS = 20  # fewer visible pixels than this (about 4x5) is not a findable starfish


@dataclass(frozen=True)
class Instance:
    """One starfish in a frame: its visible pixels, whole projected area, and the box written (None if not)."""

    track_id: int
    visible_pixels: int
    full_pixels: float
    box: tuple[int, int, int, int] | None  # x, y, width, height

    @property
    def visible_fraction(self) -> float:
        return self.visible_pixels / self.full_pixels if self.full_pixels > 0 else 0.0


@dataclass
class FrameRender:
    image: np.ndarray  # (h, w, 3) uint8 BGR
    labels: np.ndarray  # (h, w) int32: track id of the starfish seen at each pixel, 0 elsewhere
    instances: list[Instance]

    @property
    def annotations(self) -> list[dict[str, int]]:
        return [
            {"x": i.box[0], "y": i.box[1], "width": i.box[2], "height": i.box[3], "track_id": int(i.track_id)}
            for i in self.instances
            if i.box is not None
        ]


def _warp_into(image: np.ndarray, sprite: Sprite, m: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """Composite `sprite` into `image` under the 2x3 sprite->image map `m`; returns (roi origin, alpha) or None."""
    h, w = sprite.alpha.shape
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float) @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), image.shape[1]), min(int(y1), image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    local = m.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    alpha = cv2.warpAffine(sprite.alpha, local, size, flags=cv2.INTER_LINEAR, borderValue=0)
    colour = cv2.warpAffine(sprite.colour, local, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    region = image[y0:y1, x0:x1]
    region *= 1 - alpha[..., None]
    region += colour * alpha[..., None]
    return (x0, y0), alpha


def _sprite_map(camera: np.ndarray, sprite: Sprite, x: float, y: float, angle: float) -> np.ndarray:
    """sprite px -> image px: rotate about the sprite centre, move to (x, y) on the canvas, then the camera."""
    c, s = np.cos(angle), np.sin(angle)
    place = np.array(
        [[c, -s, x - (c * sprite.cx - s * sprite.cy)], [s, c, y - (s * sprite.cx + c * sprite.cy)], [0, 0, 1]]
    )
    return camera @ place


def _motion_kernel(dx: float, dy: float) -> np.ndarray | None:
    length = float(np.hypot(dx, dy))
    if length < 1.5:
        return None
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    cv2.line(
        kernel,
        (int(round(c - dx / 2)), int(round(c - dy / 2))),
        (int(round(c + dx / 2)), int(round(c + dy / 2))),
        1.0,
        1,
        cv2.LINE_AA,
    )
    return kernel / kernel.sum()


def render_frame(config: OodConfig, plan: VideoPlan, assets: SequenceAssets, frame: int) -> FrameRender:
    """Render video frame `frame` of `plan`; `assets` must be `build_sequence` of the sequence holding it."""
    seq: SequencePlan = plan.sequence_at(frame)
    t = frame - seq.start
    w, h = config.width, config.height
    camera = seq.affine(t, w, h)
    image = cv2.warpAffine(assets.canvas, camera, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    image = image.astype(np.float32) * (1 / 255.0)
    labels = np.zeros((h, w), np.int32)
    camera3 = np.vstack([camera, [0, 0, 1]])
    scale = float(seq.zoom[t])
    placed: list[tuple[int, float, tuple[int, int, int, int] | None]] = []
    for fish in seq.starfish:
        sprite = assets.starfish[fish.track_id]
        x, y, angle = fish.pose(t)
        full = float((sprite.alpha >= 0.5).sum()) * scale * scale
        done = _warp_into(image, sprite, _sprite_map(camera3, sprite, x, y, angle)[:2])
        roi = None
        if done is not None:
            (x0, y0), alpha = done
            labels[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]][alpha >= 0.5] = fish.track_id
            roi = (x0, y0, alpha.shape[1], alpha.shape[0])
        placed.append((fish.track_id, full, roi))
    for occ in assets.occluders:
        done = _warp_into(image, occ.sprite, _sprite_map(camera3, occ.sprite, occ.x, occ.y, occ.angle)[:2])
        if done is not None:
            (x0, y0), alpha = done
            labels[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]][alpha >= 0.5] = 0
    instances = []
    for track_id, full, roi in placed:
        visible, box = 0, None
        if roi is not None:
            rx, ry, rw, rh = roi
            mine = labels[ry : ry + rh, rx : rx + rw] == track_id
            visible = int(mine.sum())
            if visible >= MIN_VISIBLE_PIXELS and visible >= config.min_visible_fraction * full:
                ys, xs = np.nonzero(mine)
                bx, by = rx + int(xs.min()), ry + int(ys.min())
                bw, bh = int(xs.max()) - int(xs.min()) + 1, int(ys.max()) - int(ys.min()) + 1
                if bw > 1 and bh > 1:
                    box = (int(bx), int(by), int(bw), int(bh))  # plain ints: the CSV holds their repr
        instances.append(Instance(track_id, visible, full, box))
    return FrameRender(_optics(config, seq, assets, t, image), labels, instances)


def _optics(config: OodConfig, seq: SequencePlan, assets: SequenceAssets, t: int, image: np.ndarray) -> np.ndarray:
    rng = stream(config, seq.index, 4, t)
    w, h = config.width, config.height
    flicker = 1 + 0.04 * np.sin(t * 0.9 + seq.index)
    image *= (assets.light * flicker)[..., None]
    image *= assets.transmission
    image += assets.veil
    # Motion blur along the image motion of the frame centre over the open shutter.
    if t > 0:
        here = seq.affine(t, w, h)
        before = seq.affine(t - 1, w, h)
        centre = cv2.invertAffineTransform(here) @ np.array([w / 2, h / 2, 1.0])
        moved = before @ np.array([centre[0], centre[1], 1.0]) - np.array([w / 2, h / 2])
        kernel = _motion_kernel(float(moved[0]) * assets.shutter, float(moved[1]) * assets.shutter)
        if kernel is not None:
            image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if assets.defocus > 0:
        image = cv2.GaussianBlur(image, (0, 0), assets.defocus)
    # Marine snow: a few soft bright specks, fresh each frame.
    for _ in range(int(rng.integers(5, 60))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        v = float(rng.uniform(0.6, 0.95))
        cv2.circle(image, (x, y), int(rng.integers(1, 3)), (v, v * 1.02, v * 1.04), -1, cv2.LINE_AA)
    luma = rng.standard_normal((h, w), dtype=np.float32) * assets.noise
    chroma = rng.standard_normal((h // 2, w // 2, 3), dtype=np.float32) * (assets.noise * 0.6)
    image += luma[..., None] + cv2.resize(chroma, (w, h), interpolation=cv2.INTER_LINEAR)
    image *= assets.gains
    np.clip(image, 0.0, 1.0, out=image)
    # Mild tone curve (exponent 1 / (1.6 gamma)), not a full sRGB encode: the canvas colours are already display-ish.
    out = cv2.pow(image, 1.0 / (2.2 * assets.gamma) * 2.2 / 1.6)
    return cv2.cvtColor((out * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
