"""A camera drifting over a flat reef: one image->ground homography per frame.

The camera looks obliquely down, so its footprint on the floor is a trapezoid: the bottom image row is close
(`GROUND_PER_PIXEL` ground px per image px) and the top row is `far_ratio` times further away. It moves at a
slowly varying speed, yaws a little and bobs up and down, so starfish enter, cross and leave the frame over
consecutive frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

GROUND_PER_PIXEL = 0.8  # ground px per image px at the bottom row (the floor texture is slightly magnified there)
SHUTTER = 0.25  # fraction of the frame interval the shutter is open: motion blur = SHUTTER * image motion


@dataclass(frozen=True)
class CameraPath:
    """Per-frame image->ground homographies (T, 3, 3) and the image motion of the frame centre (T, 2) in px."""

    homographies: np.ndarray
    flow: np.ndarray

    def __len__(self) -> int:
        return len(self.homographies)


def footprint(width: int, height: int, far_ratio: float) -> np.ndarray:
    """Ground trapezoid (4, 2) in camera-local ground px for image corners TL, TR, BR, BL; origin bottom-centre."""
    near = width * GROUND_PER_PIXEL
    far = near * far_ratio
    depth = height * GROUND_PER_PIXEL * (1 + far_ratio) / 2
    return np.array([[-far / 2, -depth], [far / 2, -depth], [near / 2, 0.0], [-near / 2, 0.0]], np.float64)


def project(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homography to (N, 2) points."""
    pts = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ h.T
    return pts[:, :2] / pts[:, 2:3]


def camera_path(
    rng: np.random.Generator,
    frames: int,
    width: int,
    height: int,
    fps: float,
    far_ratio: float,
    crossing_seconds: tuple[float, float],
    start: np.ndarray,
) -> CameraPath:
    """Plan one continuous pass of `frames` frames starting at ground point `start`."""
    corners_img = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    local = footprint(width, height, far_ratio)
    # Speed: a point at the bottom of the frame crosses it in `crossing` seconds.
    crossing = rng.uniform(*crossing_seconds)
    speed = width * GROUND_PER_PIXEL / (crossing * fps)
    # Direction of travel in camera-local ground coordinates (+y points towards the camera): mostly forward or
    # mostly sideways, like a towed or drifting diver camera.
    if rng.random() < 0.5:
        alpha = rng.normal(0, 0.4)
    else:
        alpha = rng.choice([-1, 1]) * np.pi / 2 + rng.normal(0, 0.3)
    t = np.arange(frames + 1, dtype=np.float64)
    seconds = t / fps
    speed_t = speed * (1 + 0.2 * np.sin(2 * np.pi * seconds / rng.uniform(6, 14) + rng.uniform(0, 6.3)))
    heading = (
        rng.uniform(0, 2 * np.pi)
        + rng.normal(0, 0.02) * seconds
        + 0.03 * np.sin(2 * np.pi * seconds / rng.uniform(4, 9) + rng.uniform(0, 6.3))
    )
    zoom = 1 + 0.04 * np.sin(2 * np.pi * seconds / rng.uniform(5, 11) + rng.uniform(0, 6.3))
    step_local = np.stack([np.sin(alpha) * speed_t, -np.cos(alpha) * speed_t], axis=1)
    cos_h, sin_h = np.cos(heading), np.sin(heading)
    step = np.stack(
        [cos_h * step_local[:, 0] - sin_h * step_local[:, 1], sin_h * step_local[:, 0] + cos_h * step_local[:, 1]],
        axis=1,
    )
    position = start[None, :] + np.concatenate([np.zeros((1, 2)), np.cumsum(step[:-1], axis=0)])
    homographies = np.empty((frames + 1, 3, 3))
    for i in range(frames + 1):
        rot = np.array([[cos_h[i], -sin_h[i]], [sin_h[i], cos_h[i]]])
        # Solve in small local coordinates and translate in float64: ground coordinates grow large.
        ground = (local * zoom[i]) @ rot.T
        shift = np.array([[1, 0, position[i, 0]], [0, 1, position[i, 1]], [0, 0, 1]])
        homographies[i] = shift @ cv2.getPerspectiveTransform(corners_img, ground.astype(np.float32)).astype(np.float64)
    centre = np.array([[width / 2, height / 2]])
    flow = np.empty((frames, 2))
    for i in range(frames):
        ground_centre = project(homographies[i], centre)
        flow[i] = project(np.linalg.inv(homographies[i + 1]), ground_centre)[0] - centre[0]
    return CameraPath(homographies=homographies[:frames], flow=flow)
