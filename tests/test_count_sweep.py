"""`benchmarks.count_sweep`: the replay follows the agent's tracker rules for each setting, recording follows the
file camera's clock, and the grid refuses values the agent's config would refuse. That the replay at the agent's
default setting equals the real agent's count is checked on the committed bundle in tests/test_counting_ood.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.tracking.replay import CountSetting, RecordedFrame, check_grid, record_clip, replay, settings_grid

DEFAULTS = {"iou_threshold": 0.2, "max_age_s": 1.5, "low_score_threshold": 0.1, "low_iou_threshold": 0.5}


def _setting(score_threshold: float, min_hits: int = 3, **changes: float | None) -> CountSetting:
    return CountSetting(score_threshold=score_threshold, min_hits=min_hits, **{**DEFAULTS, **changes})  # type: ignore[arg-type]


def _clip(scores_per_frame: list[list[float]], fps: float = 10.0) -> list[RecordedFrame]:
    """One still box per score slot: slot k sits at x = 200 k, so slots never overlap."""
    frames = []
    for index, scores in enumerate(scores_per_frame):
        boxes = np.array([[200.0 * k, 100, 200.0 * k + 50, 150] for k in range(len(scores))], np.float32)
        frames.append(RecordedFrame(index, index / fps, boxes.reshape(-1, 4), np.array(scores, np.float32)))
    return frames


def test_min_hits_decides_whether_a_short_sighting_counts() -> None:
    seen_four_frames = _clip([[0.9]] * 4 + [[]] * 3)
    assert replay(seen_four_frames, _setting(0.5, min_hits=3)) == 1
    assert replay(seen_four_frames, _setting(0.5, min_hits=5)) == 0


def test_a_box_below_the_threshold_never_starts_a_track() -> None:
    steady_at_0_45 = _clip([[0.45]] * 10)
    assert replay(steady_at_0_45, _setting(0.4)) == 1
    assert replay(steady_at_0_45, _setting(0.5)) == 0


def test_low_score_boxes_keep_a_confirmed_track_alive_only_with_the_second_pass() -> None:
    # Confirmed at 0.9, then 20 frames (2 s at 10 fps, beyond max_age_s) at 0.3, then 0.9 again.
    flicker = _clip([[0.9]] * 5 + [[0.3]] * 20 + [[0.9]] * 5)
    assert replay(flicker, _setting(0.5)) == 1
    assert replay(flicker, _setting(0.5, low_score_threshold=None)) == 2


def test_two_separate_starfish_count_twice() -> None:
    assert replay(_clip([[0.9, 0.8]] * 6), _setting(0.5)) == 2


def test_grid_is_every_combination_sorted_and_deduplicated() -> None:
    grid = settings_grid([0.7, 0.5, 0.7], [5, 3], **DEFAULTS)  # type: ignore[arg-type]
    assert [(s.score_threshold, s.min_hits) for s in grid] == [(0.5, 3), (0.5, 5), (0.7, 3), (0.7, 5)]
    assert all(s.max_age_s == 1.5 and s.low_score_threshold == 0.1 for s in grid)


@pytest.mark.parametrize(
    ("thresholds", "min_hits", "message"),
    [([1.2], [3], "score thresholds must lie in [0, 1], got [1.2]"), ([0.5], [0, 2], "min_hits must be >= 1, got [0]")],
)
def test_grid_refuses_values_the_agent_would_refuse(thresholds: list[float], min_hits: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_grid(thresholds, min_hits)


def test_record_clip_reads_every_frame_on_the_file_clock(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (64, 48))
    for i in range(7):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    means: list[float] = []

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means.append(float(image.mean()))
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)

    frames = record_clip(detect, clip)
    assert [f.index for f in frames] == list(range(7))
    assert [f.media_s for f in frames] == pytest.approx([i / 12.0 for i in range(7)])
    assert means == sorted(means) and means[-1] > means[0]  # frames in file order


def test_record_clip_names_an_unreadable_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        record_clip(lambda image: (np.zeros((0, 4)), np.zeros(0)), broken)


def test_summed_error_can_cancel_where_the_per_clip_error_cannot() -> None:
    from edge_agent.tracking.replay import count_errors

    total, mean, worst = count_errors({0: 8, 1: 2}, {0: 5, 1: 5})  # one clip over by 3, the other under by 3
    assert total == 0.0
    assert mean == pytest.approx(0.6) and worst == pytest.approx(0.6)
    assert count_errors({0: 3}, {0: 0}) == (3.0, 3.0, 3.0)  # a clip without starfish: error per false track
