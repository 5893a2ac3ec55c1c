"""The IoU tracker: stable ids on synthetic tracks, confirmation, end events, resets, frame gaps, capture-time
ageing, ByteTrack's low-score pass, per-frame counts, fuzzing."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.tracking import Tracker, iou_matrix
from tests.helpers.agent import Clip


def _noisy(boxes: np.ndarray, rng: np.random.Generator, jitter: float, miss: float) -> np.ndarray:
    """What a decent detector returns: jittered boxes, some missed."""
    keep = rng.random(len(boxes)) >= miss
    return (boxes + rng.normal(0, jitter, boxes.shape)).astype(np.float32)[keep], keep


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], np.float32)
    ious = iou_matrix(a, b)
    assert ious.shape == (2, 3)
    assert ious[0, 0] == pytest.approx(1.0)
    assert ious[0, 1] == pytest.approx(50 / 150)
    assert ious[1].max() == 0
    assert iou_matrix(a, np.zeros((0, 4), np.float32)).shape == (2, 0)


def test_ids_stable_on_synthetic_clip(clip: Clip) -> None:
    """Every true starfish maps to exactly one tracker id, and the unique count equals the true count."""
    rng = np.random.default_rng(1)
    tracker = Tracker(iou_threshold=0.2, max_age_s=0.5, min_hits=2)
    true_to_ids: dict[int, set[int]] = defaultdict(set)
    for frame, (boxes, true_ids) in enumerate(zip(clip.boxes, clip.track_ids, strict=True)):
        noisy, kept = _noisy(boxes, rng, jitter=1.5, miss=0.1)
        update = tracker.update(noisy, np.full(len(noisy), 0.9), frame, frame / clip.fps)
        for true_id, track_id in zip(true_ids[kept], update.track_ids, strict=True):
            if track_id >= 0:
                true_to_ids[int(true_id)].add(int(track_id))
    assert all(len(ids) == 1 for ids in true_to_ids.values()), dict(true_to_ids)
    assert len(true_to_ids) == clip.true_count
    assert tracker.unique_count == clip.true_count


def test_false_positives_below_min_hits_are_never_counted() -> None:
    tracker = Tracker(min_hits=3)
    rng = np.random.default_rng(0)
    for frame in range(50):
        x, y = rng.uniform(0, 1000, 2)  # a one-frame blip somewhere new every frame
        update = tracker.update(np.array([[x, y, x + 20, y + 20]]), np.array([0.6]), frame, float(frame))
        assert update.new == [] and update.track_ids.tolist() == [-1]
    assert tracker.unique_count == 0


def test_new_and_end_events_and_reset() -> None:
    tracker = Tracker(max_age_s=0.25, min_hits=2)
    box = np.array([[100, 100, 140, 140]], np.float32)
    first = tracker.update(box, np.array([0.7]), 0, 1000.0)
    second = tracker.update(box + 2, np.array([0.9]), 1, 1000.1)
    assert first.new == [] and len(second.new) == 1
    new = second.new[0]
    assert new["event"] == "new" and new["frames"] == 2 and new["max_score"] == pytest.approx(0.9)
    assert new["first_seen"].endswith("Z")
    ended = []
    for frame in range(2, 6):
        ended += tracker.update(np.zeros((0, 4)), np.zeros(0), frame, 1000 + frame / 10).ended
    assert len(ended) == 1 and ended[0]["event"] == "end" and ended[0]["track_id"] == new["track_id"]
    assert tracker.unique_count == 1
    tracker.update(box, np.array([0.8]), 10, 1001.0)
    tracker.update(box, np.array([0.8]), 11, 1001.1)
    assert tracker.unique_count == 2
    ends = tracker.reset()
    assert tracker.unique_count == 0 and len(ends) == 1 and tracker.tracks == []


def test_frame_gaps_are_bridged_by_velocity() -> None:
    """Frames dropped by latest-frame capture: a moving box is still matched after a 4-frame jump."""
    tracker = Tracker(iou_threshold=0.3, max_age_s=10, min_hits=1)
    ids = []
    for frame in (0, 1, 2, 6, 10, 14):
        x = 10.0 * frame  # 10 px per frame on a 30 px box: a 4-frame gap leaves no overlap without prediction
        update = tracker.update(np.array([[x, 50, x + 30, 80]]), np.array([0.9]), frame, float(frame))
        ids.append(int(update.track_ids[0]))
    assert len(set(ids)) == 1
    assert tracker.unique_count == 1


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        Tracker(iou_threshold=1.5)
    with pytest.raises(ValueError, match="min_hits"):
        Tracker(min_hits=0)


_box = st.tuples(*(st.floats(0, 500, allow_nan=False),) * 2, *(st.floats(1, 80, allow_nan=False),) * 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_box, max_size=6), min_size=1, max_size=25))
def test_fuzz_tracker_invariants(frames: list[list[tuple[float, float, float, float]]]) -> None:
    tracker = Tracker(min_hits=2, max_age_s=3)
    previous_unique = 0
    for index, raw in enumerate(frames):
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in raw], np.float32).reshape(-1, 4)
        update = tracker.update(boxes, np.full(len(boxes), 0.5), index, float(index))
        assigned = [t for t in update.track_ids.tolist() if t >= 0]
        assert len(assigned) == len(set(assigned))  # never two boxes on one id in a frame
        assert update.unique_count >= previous_unique
        previous_unique = update.unique_count
    assert tracker.unique_count <= sum(len(f) for f in frames) // 2 + 1


def test_ids_stable_on_generated_reef_video(make_synthetic_dataset) -> None:
    """On the project's synthetic reef generator (true track ids per box): one tracker id per true starfish."""
    from edge_agent.dataset import ReefDataset
    from edge_agent.measure import measure_tracking

    root = make_synthetic_dataset(
        videos=1, frames=60, width=640, height=360, empty_fraction=0.2, sequence_length=60, min_size=24, max_size=80
    )
    records = sorted(ReefDataset.open(root).records, key=lambda r: r.video_frame)
    rng = np.random.default_rng(3)
    tracker = Tracker(iou_threshold=0.2, max_age_s=1.5, min_hits=3)
    true_to_ids: dict[int, set[int]] = defaultdict(set)
    for record in records:
        noisy, kept = _noisy(record.boxes, rng, jitter=1.0, miss=0.05)
        update = tracker.update(noisy, np.full(len(noisy), 0.9), record.video_frame, record.video_frame / 10)
        for true_id, track_id in zip(record.track_ids[kept], update.track_ids, strict=True):
            if track_id >= 0:
                true_to_ids[int(true_id)].add(int(track_id))
    fragmented = {t: ids for t, ids in true_to_ids.items() if len(ids) > 1}
    assert not fragmented
    truth = len({int(i) for r in records for i in r.track_ids})
    assert truth > 0
    # Starfish visible for fewer than min_hits frames cannot be confirmed; all others must be counted once.
    assert truth - 1 <= tracker.unique_count <= truth
    result = measure_tracking(root, 0, miss=0.05, jitter=1.0, false_positives=0.0)
    assert result.true_unique == truth and result.error <= 1 / truth


_BOX = np.array([[100, 100, 140, 140]], np.float32)


def _confirmed(tracker: Tracker, clock: float = 0.0, frames: int = 3) -> int:
    for frame in range(frames):
        update = tracker.update(_BOX, np.array([0.9]), frame, 1000.0 + frame, clock=clock + frame * 0.1)
    assert update.count == 1
    return int(update.track_ids[0])


def test_tracks_age_by_capture_time_not_processed_frames() -> None:
    """2 processed frames per second or 30: a starfish unseen for 1 s of capture time is kept (max_age_s 1.5), one
    unseen for 2 s is gone - however many frames were processed meanwhile."""
    slow, fast = Tracker(max_age_s=1.5), Tracker(max_age_s=1.5)
    slow_id, fast_id = _confirmed(slow), _confirmed(fast)
    empty = (np.zeros((0, 4)), np.zeros(0))
    # Slow camera: 2 empty frames spanning 1.0 s; fast camera: 30 empty frames in the same 1.0 s.
    for i in range(1, 3):
        assert slow.update(*empty, 2 + i, 0.0, clock=0.2 + 0.5 * i).ended == []
    for i in range(1, 31):
        assert fast.update(*empty, 2 + i, 0.0, clock=0.2 + i / 30).ended == []
    assert int(slow.update(_BOX, np.array([0.9]), 10, 0.0, clock=1.3).track_ids[0]) == slow_id
    assert int(fast.update(_BOX, np.array([0.9]), 40, 0.0, clock=1.3).track_ids[0]) == fast_id
    # Now 2 s unseen: one processed frame is enough to end it.
    ended = slow.update(*empty, 11, 0.0, clock=3.4).ended
    assert [e["track_id"] for e in ended] == [slow_id]
    assert slow.unique_count == 1


def test_low_score_detections_keep_confirmed_tracks_but_never_start_or_count_alone() -> None:
    tracker = Tracker(max_age_s=0.15, min_hits=3)
    track_id = _confirmed(tracker)
    # The detector grows unsure (score 0.3 < threshold 0.5) for 5 frames = 0.5 s, longer than max_age_s:
    # the second pass keeps the same starfish instead of ending it and counting it again.
    for frame in range(3, 8):
        update = tracker.update(_BOX + frame, np.array([0.3]), frame, 0.0, clock=frame * 0.1, score_threshold=0.5)
        assert update.track_ids.tolist() == [track_id] and update.count == 1 and update.ended == []
    update = tracker.update(_BOX + 8, np.array([0.9]), 8, 0.0, clock=0.8, score_threshold=0.5)
    assert update.track_ids.tolist() == [track_id] and tracker.unique_count == 1
    # Low-score boxes elsewhere never start a track, however often they appear.
    for frame in range(9, 30):
        update = tracker.update(
            np.vstack([_BOX + 8, [[400, 400, 440, 440]]]),
            np.array([0.9, 0.3]),
            frame,
            0.0,
            clock=frame * 0.1,
            score_threshold=0.5,
        )
        assert update.track_ids.tolist() == [track_id, -1] and update.count == 1
    assert tracker.unique_count == 1 and len(tracker.tracks) == 1
    # Without the second pass the same unsure frames end the track and the starfish is counted twice.
    plain = Tracker(max_age_s=0.15, min_hits=3)
    _confirmed(plain)
    for frame in range(3, 8):
        plain.update(np.zeros((0, 4)), np.zeros(0), frame, 0.0, clock=frame * 0.1)
    for frame in range(8, 11):
        plain.update(_BOX + 8, np.array([0.9]), frame, 0.0, clock=frame * 0.1)
    assert plain.unique_count == 2


def test_count_is_confirmed_tracks_in_view() -> None:
    """A one-frame blip and a starfish seen once are boxes, not starfish: `count` only counts confirmed tracks."""
    tracker = Tracker(min_hits=3)
    other = np.array([[300, 300, 340, 340]], np.float32)
    counts = []
    for frame in range(6):
        boxes = _BOX if frame < 2 else np.vstack([_BOX, other])  # the second starfish appears at frame 2
        counts.append(tracker.update(boxes, np.full(len(boxes), 0.9), frame, float(frame), clock=frame / 10).count)
    assert counts == [0, 0, 1, 1, 2, 2]


def test_flush_ends_tracks_but_keeps_the_unique_count() -> None:
    tracker = Tracker(min_hits=2)
    track_id = _confirmed(tracker)
    ended = tracker.flush()
    assert [e["track_id"] for e in ended] == [track_id] and tracker.tracks == []
    assert tracker.unique_count == 1
    # After the break the same place is a new track (a camera that came back, a looped file).
    tracker.update(_BOX, np.array([0.9]), 10, 0.0, clock=5.0)
    update = tracker.update(_BOX, np.array([0.9]), 11, 0.0, clock=5.1)
    assert update.track_ids[0] not in (-1, track_id) and tracker.unique_count == 2
