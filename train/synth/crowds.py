"""Randomized-style planning: COTS outbreak crowds and distractors laid on the floor of each sequence.

Both fill a sequence frame by frame: while the frame with the fewest items (centres inside the frame) is below the
target, an item is dropped at a random point of that frame. The camera keeps moving, so this gives a steady
density along the pass instead of one clump. Items live in ground coordinates, like the classic starfish.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from train.synth.camera import GROUND_PER_PIXEL
from train.synth.distractors import pick_kind
from train.synth.plan import (
    MAX_PER_OUTBREAK_FRAME,
    OUTBREAK_PER_FRAME,
    DistractorPlan,
    SequencePlan,
    TrackPlan,
    VideoLayout,
    _near_frame,
    starfish_diameter,
)

TOP_SHARE = 0.2


def _size_range(layout: VideoLayout) -> tuple[float, float]:
    """Ground diameters from the smallest starfish at the far edge to the largest at the near edge."""
    config = layout.config
    lo = config.min_size * GROUND_PER_PIXEL * layout.far_ratio
    hi = config.effective_max_size * GROUND_PER_PIXEL
    return (lo, hi) if lo <= hi else (hi, lo)


def _ground_point(layout: VideoLayout, frame: int, rng: np.random.Generator, reach: float) -> np.ndarray:
    config = layout.config
    u = rng.uniform(-reach, 1 + reach) * config.width
    v = rng.uniform(-reach, 1 + reach) * config.height
    vec = layout.homographies[frame] @ np.array([u, v, 1.0])
    return vec[:2] / vec[2]


def _fill_sequence(
    layout: VideoLayout,
    rng: np.random.Generator,
    seq: SequencePlan,
    target: int,
    make,
    counts: np.ndarray,
    cap: int,
    inverse: np.ndarray,
) -> list:
    """Drop items made by `make(frame, ground, added)` (None = spot refused) until every frame holds `target`."""
    window = slice(seq.start, seq.start + seq.length)
    added: list = []
    for _ in range(40 * target + 10 * seq.length):
        low = counts[window]
        if low.min() >= target:
            break
        below = np.flatnonzero(low < target)
        t0 = seq.start + int(below[rng.integers(len(below))])
        item = make(t0, _ground_point(layout, t0, rng, 0.04), added)
        if item is None:
            continue
        inside = _near_frame(layout, inverse, item, 0.0)
        if (counts + inside).max() > cap:
            continue
        counts += inside
        added.append(item)
    return added


def place_outbreaks(layout: VideoLayout, rng: np.random.Generator, first_track_id: int) -> None:
    """Turn a share (`outbreak_fraction`) of the sequences into COTS outbreaks of 20-50 starfish per frame.

    Track ids continue the video's: a track's id is `first_track_id` + its index in `layout.tracks`.
    """
    config = layout.config
    inverse = np.linalg.inv(layout.homographies)
    lo, hi = _size_range(layout)
    counts = np.zeros(layout.frames, int)
    for track in layout.tracks:
        counts += _near_frame(layout, inverse, track, 0.0)
    for seq in layout.sequences:
        if rng.random() >= config.outbreak_fraction:
            continue
        layout.outbreaks.append(seq.sequence_id)
        same = [t for t in layout.tracks if t.sequence_id == seq.sequence_id]
        target = int(rng.integers(OUTBREAK_PER_FRAME[0], OUTBREAK_PER_FRAME[1] + 1))

        def make(
            t0: int, ground: np.ndarray, added: list[TrackPlan], same: list[TrackPlan] = same, seq: SequencePlan = seq
        ) -> TrackPlan | None:
            # Outbreak starfish are mostly smaller (a frame must hold dozens) and may overlap by up to half.
            diameter = starfish_diameter(rng, lo, max(lo, 0.6 * hi), True)
            occluded = bool(rng.random() < config.occlusion_probability)
            if any(
                np.hypot(t.ground[0] - ground[0], t.ground[1] - ground[1]) < 0.25 * (t.diameter + diameter)
                for t in (*same, *added)
            ):
                return None
            # Provisional id; the kept ones are numbered in order below.
            return TrackPlan(
                track_id=-1,
                sequence_id=seq.sequence_id,
                ground=(float(ground[0]), float(ground[1])),
                diameter=diameter,
                occluded=occluded,
            )

        for track in _fill_sequence(layout, rng, seq, target, make, counts, MAX_PER_OUTBREAK_FRAME, inverse):
            layout.tracks.append(replace(track, track_id=first_track_id + len(layout.tracks)))


def place_distractors(layout: VideoLayout, rng: np.random.Generator) -> None:
    """Lay distractors over every sequence at a per-video density drawn from the config's distractors_per_frame
    range, at starfish scales."""
    inverse = np.linalg.inv(layout.homographies)
    lo, hi = _size_range(layout)
    counts = np.zeros(layout.frames, int)
    fewest, most = layout.config.distractors_per_frame
    target = int(rng.integers(fewest, most + 1))
    if target == 0:
        return
    for seq in layout.sequences:

        def make(t0: int, ground: np.ndarray, added: list, seq: SequencePlan = seq) -> DistractorPlan:
            kind = pick_kind(rng)
            # Fish swim over everything; a share of the rest lies over starfish (partial occlusion, not by coral).
            on_top = kind == "fish" or bool(rng.random() < TOP_SHARE)
            return DistractorPlan(
                sequence_id=seq.sequence_id,
                ground=(float(ground[0]), float(ground[1])),
                diameter=starfish_diameter(rng, lo, hi, True),
                kind=kind,
                on_top=on_top,
            )

        layout.distractors.extend(_fill_sequence(layout, rng, seq, target, make, counts, 4 * target, inverse))
