"""Cheap, deterministic layout of a synthetic dataset: sequences, camera passes and where the starfish lie.

Planning is separate from rendering: it holds no images, so a whole dataset is planned first (track ids and
sequence ids then come out unique across it), and each frame can afterwards be rendered on its own, in any order
and in any process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from train.synth.camera import GROUND_PER_PIXEL, camera_path
from train.synth.config import SynthConfig

# Purposes for independent random streams: SeedSequence(seed, spawn_key=(video, purpose, ...)).
STREAM_LAYOUT, STREAM_TEXTURE, STREAM_SPRITE, STREAM_LOOK = 1, 2, 3, 4
# Randomized style only (new streams, so the classic reef's draws, and therefore its bytes, are unchanged).
STREAM_CROWD, STREAM_DISTRACTOR, STREAM_DISTRACTOR_SPRITE, STREAM_STYLE = 5, 6, 7, 8
MIN_SEQUENCE = 4
# A candidate starfish counts as "in" a frame while its centre is inside the frame grown by this share of its
# image radius; used to aim at the requested empty-frame fraction (the written boxes decide the real figure).
OCCUPANCY_MARGIN = 0.9
MAX_PER_FRAME = 8  # the real set peaks at 18 in a frame, but more than a handful is rare
# COTS outbreaks (randomized style): dozens in one frame. The cap keeps frames drawable and counts plausible.
OUTBREAK_PER_FRAME = (20, 50)
MAX_PER_OUTBREAK_FRAME = 60


def stream(config: SynthConfig, video: int, purpose: int, *extra: int) -> np.random.Generator:
    """An independent generator for one purpose of one video, a pure function of the seed."""
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(video, purpose, *extra)))


@dataclass(frozen=True)
class SequencePlan:
    sequence_id: int
    start: int  # first video_frame of the sequence
    length: int


@dataclass(frozen=True)
class TrackPlan:
    """One starfish on the floor of one sequence (it never appears in another: sequences are separate passes)."""

    track_id: int
    sequence_id: int
    ground: tuple[float, float]
    diameter: float  # ground px, spines included
    occluded: bool


@dataclass(frozen=True)
class DistractorPlan:
    """Something on the floor that is not a COTS (coral blob, urchin, other starfish, ...): never gets a box."""

    sequence_id: int
    ground: tuple[float, float]
    diameter: float  # ground px
    kind: str
    on_top: bool = False  # lies over the starfish (hides parts of them) instead of under them


@dataclass
class VideoLayout:
    config: SynthConfig
    video_id: int
    far_ratio: float
    texture_size: int
    sequences: list[SequencePlan]
    homographies: np.ndarray  # (frames, 3, 3) image px -> ground px
    flow: np.ndarray  # (frames, 2) image motion of the frame centre, px per frame
    tracks: list[TrackPlan] = field(default_factory=list)
    frame_tracks: list[list[int]] = field(default_factory=list)  # per frame: indices into `tracks` to draw
    outbreaks: list[int] = field(default_factory=list)  # sequence ids of outbreak sequences (randomized style)
    distractors: list[DistractorPlan] = field(default_factory=list)
    frame_distractors: list[list[int]] = field(default_factory=list)  # per frame: indices into `distractors`

    @property
    def frames(self) -> int:
        return len(self.homographies)

    def sequence_at(self, frame: int) -> SequencePlan:
        for seq in self.sequences:
            if seq.start <= frame < seq.start + seq.length:
                return seq
        raise IndexError(f"frame {frame} outside video {self.video_id} (0..{self.frames - 1})")


def texture_size_for(config: SynthConfig, far_ratio_max: float = 2.0) -> int:
    """Tile just wide enough for the far edge of the footprint, rounded up to a multiple of 256."""
    need = max(config.width * far_ratio_max, config.height * 1.6) * GROUND_PER_PIXEL
    return int(np.ceil(need / 256.0) * 256)


def _sequence_lengths(rng: np.random.Generator, frames: int, mean_length: int) -> list[int]:
    count = max(min(2, frames // MIN_SEQUENCE), int(round(frames / mean_length)), 1)
    spare = frames - MIN_SEQUENCE * count
    if spare < 0:
        return [frames]
    extra = rng.multinomial(spare, rng.dirichlet(np.full(count, 4.0)))
    return [MIN_SEQUENCE + int(e) for e in extra]


def _image_positions(inverse: np.ndarray, point: tuple[float, float]) -> np.ndarray:
    """Image position (n, 2) of one ground point under n ground->image homographies."""
    vec = inverse @ np.array([point[0], point[1], 1.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = vec[:, :2] / vec[:, 2:3]
    pos[vec[:, 2] <= 0] = np.inf  # behind the horizon: never visible
    return pos


def _near_frame(
    layout: VideoLayout, inverse: np.ndarray, track: TrackPlan | DistractorPlan, margin: float
) -> np.ndarray:
    """Bool per frame: the track's centre is inside the frame grown by `margin` x its image radius."""
    config = layout.config
    centre = _image_positions(inverse, track.ground)
    edge = _image_positions(inverse, (track.ground[0] + track.diameter / 2, track.ground[1]))
    with np.errstate(invalid="ignore"):
        radius = np.linalg.norm(edge - centre, axis=1)
    grow = margin * np.nan_to_num(radius, nan=0.0, posinf=0.0)
    inside = (
        (centre[:, 0] > -grow)
        & (centre[:, 0] < config.width + grow)
        & (centre[:, 1] > -grow)
        & (centre[:, 1] < config.height + grow)
    )
    seq = next(s for s in layout.sequences if s.sequence_id == track.sequence_id)
    in_sequence = np.zeros(layout.frames, bool)
    in_sequence[seq.start : seq.start + seq.length] = True
    return inside & in_sequence


def plan_video(config: SynthConfig, video_id: int, sequence_ids: list[int], first_track_id: int) -> VideoLayout:
    """Lay out one video: its sequences (ids given), camera passes and starfish positions."""
    rng = stream(config, video_id, STREAM_LAYOUT)
    lengths = _sequence_lengths(rng, config.frames, config.sequence_length)
    if len(lengths) != len(sequence_ids):
        raise ValueError(f"video {video_id}: {len(lengths)} sequences planned but {len(sequence_ids)} ids given")
    far_ratio = float(rng.uniform(1.6, 2.0))
    sequences, homographies, flows, start = [], [], [], 0
    for seq_id, length in zip(sequence_ids, lengths, strict=True):
        sequences.append(SequencePlan(sequence_id=seq_id, start=start, length=length))
        origin = rng.uniform(0, 1e5, 2)  # a different stretch of reef for every pass
        path = camera_path(
            rng, length, config.width, config.height, config.fps, far_ratio, config.crossing_seconds, origin
        )
        homographies.append(path.homographies)
        flows.append(path.flow)
        start += length
    layout = VideoLayout(
        config=config,
        video_id=video_id,
        far_ratio=far_ratio,
        texture_size=texture_size_for(config),
        sequences=sequences,
        homographies=np.concatenate(homographies),
        flow=np.concatenate(flows),
    )
    _place_tracks(layout, rng, first_track_id)
    if config.style == "randomized":
        from train.synth.crowds import place_distractors, place_outbreaks

        place_outbreaks(layout, stream(config, video_id, STREAM_CROWD), first_track_id)
        place_distractors(layout, stream(config, video_id, STREAM_DISTRACTOR))
    layout.frame_tracks = frames_to_draw(layout, layout.tracks)
    layout.frame_distractors = frames_to_draw(layout, layout.distractors)
    return layout


def frames_to_draw(layout: VideoLayout, items: list) -> list[list[int]]:
    """Per frame, the indices of the items to draw: every frame where any of one may show (radius, spines, shadow)."""
    inverse = np.linalg.inv(layout.homographies)
    out: list[list[int]] = [[] for _ in range(layout.frames)]
    for index, item in enumerate(items):
        for f in np.flatnonzero(_near_frame(layout, inverse, item, 1.4)):
            out[f].append(index)
    return out


def _place_tracks(layout: VideoLayout, rng: np.random.Generator, first_track_id: int) -> None:
    """Drop starfish on the floor until about (1 - empty_fraction) of the frames show at least one.

    Each attempt picks a frame that is still empty and a point in it, so starfish enter and leave naturally and
    the empty frames come in runs, as in real footage. A starfish sometimes brings neighbours (COTS aggregate).
    """
    config = layout.config
    frames = layout.frames
    inverse = np.linalg.inv(layout.homographies)
    target = int(round((1.0 - config.empty_fraction) * frames))
    tolerance = max(1, int(round(0.05 * frames)))
    occupied = np.zeros(frames, bool)
    scale_lo = GROUND_PER_PIXEL * layout.far_ratio  # far edge: ground px per image px
    lo, hi = sorted((config.min_size * scale_lo, config.effective_max_size * GROUND_PER_PIXEL))
    tracks: list[TrackPlan] = []
    next_id = first_track_id

    randomized = config.style == "randomized"

    def candidate(t0: int, ground: np.ndarray) -> tuple[TrackPlan, np.ndarray] | None:
        """A starfish at `ground` in the sequence of frame t0 and the frames it shows in; None if it cannot."""
        seq = layout.sequence_at(t0)
        diameter = starfish_diameter(rng, lo, hi, randomized)
        track = TrackPlan(
            track_id=next_id,
            sequence_id=seq.sequence_id,
            ground=(float(ground[0]), float(ground[1])),
            diameter=diameter,
            occluded=bool(rng.random() < config.occlusion_probability),
        )
        # Starfish rarely lie on top of each other: skip a spot that overlaps one already there.
        # (The randomized style lets them overlap by up to half: the detector must learn to split touching ones.)
        spacing = 0.25 if randomized else 0.5
        crowded = any(
            t.sequence_id == track.sequence_id
            and np.hypot(t.ground[0] - ground[0], t.ground[1] - ground[1]) < spacing * (t.diameter + diameter)
            for t in tracks
        )
        near = _near_frame(layout, inverse, track, OCCUPANCY_MARGIN)
        return None if crowded or not near.any() else (track, near)

    def random_point(t0: int) -> np.ndarray:
        if randomized:  # reach past the frame's edges too: starfish cut by the edge must be common
            u = rng.uniform(-0.04, 1.04) * config.width
            v = rng.uniform(-0.04, 1.04) * config.height
        else:
            u = rng.uniform(0.05, 0.95) * config.width
            v = rng.uniform(0.1, 0.95) * config.height
        vec = layout.homographies[t0] @ np.array([u, v, 1.0])
        return vec[:2] / vec[2]

    attempts = 0
    while occupied.sum() < target and attempts < 50 + 20 * frames:
        attempts += 1
        t0 = int(rng.choice(np.flatnonzero(~occupied)))
        anchor = random_point(t0)
        group = [anchor]
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 5))):
                ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 4.0) * hi
                group.append(anchor + dist * np.array([np.cos(ang), np.sin(ang)]))
        added: list[TrackPlan] = []
        union = occupied.copy()
        for ground in group:
            made = candidate(t0, ground)
            if made is None:
                continue
            track, near = made
            tracks.append(track)  # provisionally, so the group's members do not overlap each other
            added.append(track)
            next_id += 1
            union |= near
        if not added:
            continue
        if union.sum() > target + tolerance and (len(tracks) > len(added) or attempts < 10 + 10 * frames):
            # Would overshoot the requested share of frames with starfish (late on, accept one anyway).
            del tracks[-len(added) :]
            next_id -= len(added)
            continue
        occupied = union
    # Second pass: more starfish only where starfish already are, so frames hold several and the number of
    # distinct starfish grows without changing the empty-frame share.
    wanted = max(2, len(tracks) // 2)
    per_frame = np.zeros(frames, int)
    for track in tracks:
        per_frame += _near_frame(layout, inverse, track, OCCUPANCY_MARGIN)
    for _ in range(10 * wanted):
        if wanted <= 0 or not occupied.any():
            break
        t0 = int(rng.choice(np.flatnonzero(occupied)))
        made = candidate(t0, random_point(t0))
        if made is None or (made[1] & ~occupied).any() or (per_frame + made[1]).max() > MAX_PER_FRAME:
            continue
        tracks.append(made[0])
        next_id += 1
        per_frame += made[1]
        wanted -= 1
    layout.tracks = tracks


def starfish_diameter(rng: np.random.Generator, lo: float, hi: float, randomized: bool) -> float:
    """Log-uniform between lo and hi; the randomized style leans towards small ones (the detector missed < 30 px)."""
    if not randomized:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    u = rng.uniform(0.0, 1.0) ** 1.8
    return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))


def plan_dataset(config: SynthConfig) -> list[VideoLayout]:
    """Plan every video; sequence ids (5-digit, like Kaggle's) and track ids are unique across the dataset."""
    counts = [
        len(_sequence_lengths(stream(config, v, STREAM_LAYOUT), config.frames, config.sequence_length))
        for v in range(config.videos)
    ]
    ids_rng = stream(config, -1 % 2**32, STREAM_LAYOUT)
    total = sum(counts)
    pool = 90_000 if total <= 90_000 else total * 10
    sequence_ids = (ids_rng.choice(pool, size=total, replace=False) + 10_000).tolist()
    layouts, offset, next_track = [], 0, 1
    for video, count in enumerate(counts):
        layout = plan_video(config, video, sequence_ids[offset : offset + count], next_track)
        layouts.append(layout)
        offset += count
        next_track += len(layout.tracks)
    return layouts
